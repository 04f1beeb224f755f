"""Gateway tests: the gateway app in-process, the registry it calls served for real on a loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.app import create_app as create_gateway
from registry.app import create_app as create_registry
from shared.settings import Settings
from tests.conftest import ADMIN_KEY, LiveServer, asgi_client
from tests.gateway.fakes import Seen, registry, replica


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


@dataclass
class FakePlatform:
    """A fake registry and two fake replicas on loopback; `routes` is what the registry lists (edit freely)."""

    routes: dict[str, Any]
    seen: Seen
    replicas: list[str]
    registry_url: str


@pytest.fixture
def fake_platform() -> Iterator[FakePlatform]:
    seen, routes = Seen(), {}
    with (
        LiveServer(replica(seen, "a")) as a,
        LiveServer(replica(seen, "b")) as b,
        LiveServer(registry(routes, seen)) as reg,
    ):
        yield FakePlatform(routes, seen, [a.url, b.url], reg.url)


@pytest.fixture
def fake_settings(settings: Settings, fake_platform: FakePlatform) -> Settings:
    return settings.model_copy(update={"registry_url": fake_platform.registry_url})


def live_gateway(settings: Settings) -> LiveServer:
    """The gateway app served by uvicorn on a loopback port (real HTTP, raw paths as sent)."""
    return LiveServer(create_gateway(settings))


@asynccontextmanager
async def http_client(server: LiveServer, key: str | None = ADMIN_KEY) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
        yield client
