"""Services.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="RESTRICT"), nullable=False),
        sa.Column(
            "version_id", sa.Integer(), sa.ForeignKey("model_versions.id", ondelete="RESTRICT"), nullable=True
        ),
        sa.Column("alias", sa.String(64), nullable=True),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("cpu_reserve", sa.Float(), nullable=True),
        sa.Column("memory_reserve", sa.Integer(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_services_name", "services", ["name"], unique=True)
    op.create_index("ix_services_model_id", "services", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_services_model_id", table_name="services")
    op.drop_index("ix_services_name", table_name="services")
    op.drop_table("services")
