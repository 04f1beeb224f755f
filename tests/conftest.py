"""Fixtures every test folder builds on: settings on a clean Redis DB and a clean database (SQLite or PostgreSQL)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa
from fastapi import FastAPI

from shared.settings import Settings

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_REDIS_URL = os.environ.get("MODELSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_POSTGRES_URL = os.environ.get(
    "MODELSERVE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
ADMIN_KEY = "msk_testadmin_" + "a" * 40


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc}); start it (bash .ci/run does)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis; without one (a laptop), a real redis-server started for the session."""
    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2).ping()
        yield TEST_REDIS_URL
        return
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is not reachable at {TEST_REDIS_URL} ({exc}); .ci/run starts it")
    from shared.redis_server import redis_server_argv

    port = free_port()
    proc = subprocess.Popen(redis_server_argv(tmp_path_factory.mktemp("redis"), port), stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/15"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A Redis database flushed before and after the test (rq's own tests do the same)."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    yield redis_server_url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated template database; each test clones it (CREATE DATABASE … TEMPLATE is fast)."""
    from registry.database import migrate
    from shared.db import create_db_engine

    try:
        admin = sa.create_engine(TEST_POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    name = f"modelserve_tpl_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = create_db_engine(_with_db(TEST_POSTGRES_URL, name))
    migrate(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _with_db(url: str, name: str) -> str:
    return str(sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False))


@pytest.fixture
def postgres_url(postgres_template: str) -> Iterator[str]:
    name = f"modelserve_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(TEST_POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    yield _with_db(TEST_POSTGRES_URL, name)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs the test once on SQLite and once on PostgreSQL, each time on a clean database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, sqlite_url: str) -> Settings:
    """Settings for one test; override `database_url` in a folder conftest to run on both databases."""
    return Settings(
        environment="test",
        data_dir=tmp_path / "data",
        database_url=sqlite_url,
        redis_url=redis_url,
        admin_key=ADMIN_KEY,
        log_json=False,
    )


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    """Runs an app's lifespan (httpx's ASGI transport does not)."""
    async with app.router.lifespan_context(app):
        yield app


@asynccontextmanager
async def asgi_client(app: FastAPI, **headers: str) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as client:
            yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """An app served by uvicorn on a loopback port in a thread: a real HTTP peer for aiohttp/httpx clients."""

    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


# --- model files, generated once per session (tests/fixtures/models.py makes them) -------------------------


@pytest.fixture(scope="session")
def pmml_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every valid PMML fixture by name (sklearn2pmml's and hand-written)."""
    from tests.fixtures import models

    return models.make_all_pmml(tmp_path_factory.mktemp("pmml"))


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every valid ONNX fixture by name."""
    from tests.fixtures import models

    return models.make_all_onnx(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files that must be refused, by name (see `models.BAD_MAKERS`)."""
    from tests.fixtures import models

    directory = tmp_path_factory.mktemp("bad")
    return {name: make(directory) for name, make in models.BAD_MAKERS.items()}
