from __future__ import annotations

import sqlalchemy as sa

from registry.database import alembic_config, migrate
from shared.db import create_db_engine


def test_migrations_upgrade_downgrade_upgrade(database_url: str) -> None:
    from alembic import command

    engine = create_db_engine(database_url)
    migrate(engine)
    migrate(engine)  # idempotent
    assert "api_keys" in sa.inspect(engine).get_table_names()
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert "api_keys" not in sa.inspect(engine).get_table_names()
    migrate(engine)
    assert "api_keys" in sa.inspect(engine).get_table_names()
    engine.dispose()
