"""Run numbers that are never given twice, and the Idempotency-Key of uploads.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_jobs") as batch:
        batch.add_column(sa.Column("last_run_number", sa.Integer(), nullable=False, server_default="0"))
    # Jobs that already have runs continue after their highest number.
    op.execute(
        "UPDATE batch_jobs SET last_run_number = "
        "COALESCE((SELECT MAX(number) FROM batch_runs WHERE batch_runs.job_id = batch_jobs.id), 0)"
    )
    op.create_table(
        "upload_keys",
        sa.Column("scope", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("ref", sa.String(300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upload_keys")
    with op.batch_alter_table("batch_jobs") as batch:
        batch.drop_column("last_run_number")
