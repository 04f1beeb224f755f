"""Registry tests: the registry app in-process over httpx, on SQLite and on PostgreSQL, each on a clean database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from registry.app import create_app
from shared.settings import Settings
from tests.conftest import asgi_client


@pytest.fixture
def sqlite_settings(settings: Settings) -> Settings:
    """The root settings (SQLite) for tests whose subject does not depend on the database."""
    return settings


@pytest.fixture
def db_settings(settings: Settings, database_url: str) -> Settings:
    """Runs the test on SQLite and on PostgreSQL."""
    return settings.model_copy(update={"database_url": database_url})


@pytest.fixture
async def registry(db_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(db_settings)) as client:
        yield client


@pytest.fixture
async def sqlite_registry(sqlite_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_app(sqlite_settings)) as client:
        yield client
