"""Console tests: one `modelserve up` per module (a real platform), iris models, a loopback file server."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app as create_gateway
from registry.app import create_app as create_registry
from shared.settings import Settings
from tests.conftest import IN_CI, LiveServer, asgi_client
from tests.e2e.conftest import Platform, start_platform
from tests.fixtures.batch import iris_csv

PLATFORM_ENV = {
    "MODELSERVE_DATASET_FETCH_ALLOWLIST": '["127.0.0.1"]',  # the test's own loopback file server
    "MODELSERVE_BATCH_PROGRESS_INTERVAL_SECONDS": "0",  # every chunk reports: a run's progress is seen moving
    # A PMML upload or first test starts a JVM, which on a loaded CI machine can outlast the default 30 s.
    "MODELSERVE_REQUEST_TIMEOUT_SECONDS": "180",
}


@pytest.fixture(scope="module")
def console_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The platform as `modelserve up` starts it, allowed to fetch datasets from this test's loopback server."""
    base = tmp_path_factory.mktemp("platform")
    running = start_platform(base / "data", base / "up.log", env=PLATFORM_ENV)
    yield running
    if running.process.poll() is None:
        running.stop()


@pytest.fixture(scope="module")
def admin(console_platform: Platform) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {console_platform.admin_key}"}
    with httpx.Client(base_url=console_platform.url, headers=headers, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def predict_key(admin: httpx.Client) -> str:
    resp = admin.post("/api/v1/keys", json={"name": "predict-only", "scopes": ["predict"]})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


@pytest.fixture(scope="session")
def iris_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures import models

    return models.make_onnx_logistic_regression(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="session")
def iris_pmml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures import models

    return models.make_pmml_logistic_regression(tmp_path_factory.mktemp("pmml"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A directory served over HTTP on loopback (the 'remote' datasets), with `iris.csv` in it."""
    root = tmp_path_factory.mktemp("served")
    iris_csv(root / "iris.csv", 300)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright; outside CI a machine without it skips, in CI it fails."""
    missing = None if CHROMIUM.exists() else f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is missing (pip install playwright)"
    if missing:
        if IN_CI:
            pytest.fail(missing)
        pytest.skip(missing)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def registry_server(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_registry(settings)) as server:
        yield server


@pytest.fixture
async def gateway(settings: Settings, registry_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway app in-process (its console included), the registry it calls served for real on loopback."""
    gateway_settings = settings.model_copy(update={"registry_url": registry_server.url})
    async with asgi_client(create_gateway(gateway_settings)) as client:
        yield client
