"""First-start work: schema migrations and the admin key."""

from __future__ import annotations

from sqlmodel import Session

from registry.database import migrate
from registry.keys import ensure_admin_key
from shared.db import create_db_engine
from shared.settings import Settings


def bootstrap(settings: Settings) -> str | None:
    """Migrate the database and ensure an admin key; returns a newly generated key to print once."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.effective_database_url)
    try:
        migrate(engine)
        with Session(engine) as session:
            return ensure_admin_key(session, settings)
    finally:
        engine.dispose()
