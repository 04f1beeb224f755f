"""Gateway tests: the gateway app in-process, the registry it calls served for real on a loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gateway.app import create_app as create_gateway
from registry.app import create_app as create_registry
from shared.settings import Settings
from tests.conftest import ADMIN_KEY, LiveServer, asgi_client


@pytest.fixture
def registry_server(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_registry(settings)) as server:
        yield server


@pytest.fixture
def gateway_settings(settings: Settings, registry_server: LiveServer) -> Settings:
    return settings.model_copy(update={"registry_url": registry_server.url})


@pytest.fixture
async def gateway(gateway_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_gateway(gateway_settings)) as client:
        yield client


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}
