"""Remote datasets: the fetch task against a real HTTP server and a live registry, and through a burst worker."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from rq import Queue
from rq.serializers import JSONSerializer
from sqlmodel import Session

from jobs.fetch import FetchFailed, allowed, check_url, fetch_remote_dataset, refusal_reason
from jobs.worker import build_worker
from registry.app import create_app
from registry.datasets import DatasetCatalog
from shared.artifacts import LocalArtifactStore
from shared.auth import INTERNAL_TOKEN_HEADER
from shared.db import create_db_engine
from shared.redis import BATCH_QUEUE, sync_redis
from shared.settings import Settings
from tests.conftest import LiveServer

TOKEN = "internal-test-token"
CSV = b"x,y,label\n" + b"".join(f"{i},{i * 0.5},{'ab'[i % 2]}\n".encode() for i in range(500))


class _Files(BaseHTTPRequestHandler):
    """Serves the CSV, redirects, a 404 and a body without a length."""

    def do_GET(self) -> None:
        routes = {
            "/redirect-ok": "/data.csv",
            "/redirect-private": "http://169.254.169.254/latest/meta-data/",
            "/redirect-ten": "http://10.0.0.8/data.csv",
            "/loop": "/loop",
        }
        if self.path == "/data.csv":
            self._send(200, CSV, length=True)
        elif self.path == "/unsized.csv":
            self._send(200, CSV, length=False)
        elif self.path in routes:
            self.send_response(302)
            self.send_header("Location", routes[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"not here", length=True)

    def _send(self, status: int, body: bytes, *, length: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/csv")
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def file_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def live_registry(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings.model_copy(update={"internal_token": TOKEN}))) as live:
        yield live


@pytest.fixture
def fetch_settings(settings: Settings, live_registry: LiveServer) -> Settings:
    """What a worker would run with: the live registry, loopback allow-listed."""
    return settings.model_copy(
        update={"registry_url": live_registry.url, "internal_token": TOKEN, "dataset_fetch_allowlist": ["127.0.0.1"]}
    )


def client(live: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=live.url, headers={INTERNAL_TOKEN_HEADER: TOKEN}, timeout=30)


def request_fetch(live: LiveServer, name: str, url: str) -> None:
    with client(live) as c:
        resp = c.post("/api/v1/datasets", json={"name": name, "source_url": url})
    assert resp.status_code == 202, resp.text


def dataset(live: LiveServer, name: str) -> dict[str, object]:
    with client(live) as c:
        return dict(c.get(f"/api/v1/datasets/{name}").json())


def pending_row(settings: Settings, name: str, url: str) -> None:
    """A `fetching` dataset whatever its URL (the API itself refuses non-http URLs up front)."""
    engine = create_db_engine(settings.effective_database_url)
    with Session(engine) as session:
        DatasetCatalog(session, LocalArtifactStore(settings.datasets_dir)).create_remote(name, url)
    engine.dispose()


def test_allow_listed_loopback_file_becomes_ready(
    file_server: str, live_registry: LiveServer, fetch_settings: Settings
) -> None:
    for name, path in (("direct", "/data.csv"), ("redirected", "/redirect-ok"), ("unsized", "/unsized.csv")):
        request_fetch(live_registry, name, file_server + path)
        fetch_remote_dataset(name, file_server + path, settings=fetch_settings)
        body = dataset(live_registry, name)
        assert body["status"] == "ready", body
        assert body["format"] == "csv" and body["rows"] == 500 and body["size_bytes"] == len(CSV)
        assert body["columns"] == [
            {"name": "x", "type": "int64"},
            {"name": "y", "type": "double"},
            {"name": "label", "type": "string"},
        ]
        with client(live_registry) as c:
            assert c.get(f"/api/v1/datasets/{name}/download").content == CSV


def test_loopback_is_refused_without_the_allowlist(
    file_server: str, live_registry: LiveServer, fetch_settings: Settings
) -> None:
    url = file_server + "/data.csv"
    request_fetch(live_registry, "local", url)
    fetch_remote_dataset("local", url, settings=fetch_settings.model_copy(update={"dataset_fetch_allowlist": []}))
    body = dataset(live_registry, "local")
    assert body["status"] == "failed"
    assert "127.0.0.1" in str(body["status_reason"]) and "loopback" in str(body["status_reason"])
    assert body["rows"] is None


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/data.csv", "gopher://127.0.0.1/x"])
def test_other_schemes_are_refused(
    live_registry: LiveServer, fetch_settings: Settings, settings: Settings, url: str
) -> None:
    pending_row(settings, "scheme", url)
    fetch_remote_dataset("scheme", url, settings=fetch_settings)
    body = dataset(live_registry, "scheme")
    assert body["status"] == "failed" and "only http and https" in str(body["status_reason"])


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/redirect-private", ["169.254.169.254", "link-local"]),
        ("/redirect-ten", ["10.0.0.8", "private"]),
        ("/loop", ["more than 5 redirects"]),
        ("/missing.csv", ["HTTP 404"]),
    ],
)
def test_bad_redirects_and_answers_fail_with_the_reason(
    file_server: str, live_registry: LiveServer, fetch_settings: Settings, path: str, words: list[str]
) -> None:
    request_fetch(live_registry, "hop", file_server + path)
    fetch_remote_dataset("hop", file_server + path, settings=fetch_settings)
    body = dataset(live_registry, "hop")
    assert body["status"] == "failed"
    for word in words:
        assert word in str(body["status_reason"]), body


@pytest.mark.parametrize("path", ["/data.csv", "/unsized.csv"])
def test_oversized_files_are_refused(
    file_server: str, live_registry: LiveServer, fetch_settings: Settings, path: str
) -> None:
    request_fetch(live_registry, "huge", file_server + path)
    small = fetch_settings.model_copy(update={"max_upload_bytes": 1000})
    fetch_remote_dataset("huge", file_server + path, settings=small)
    body = dataset(live_registry, "huge")
    assert body["status"] == "failed" and "larger than the limit of 1000 bytes" in str(body["status_reason"])
    assert not [p for p in fetch_settings.datasets_dir.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:a00:1::1", "private"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_refusal_reasons(address: str, kind: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == kind


def test_allowlist_by_host_or_network(settings: Settings) -> None:
    ten = ipaddress.ip_address("10.1.2.3")
    assert allowed("data.internal", ten, ["data.internal"])
    assert allowed("other", ten, ["10.0.0.0/8"])
    assert allowed("other", ipaddress.ip_address("::ffff:10.1.2.3"), ["10.0.0.0/8"])
    assert not allowed("other", ten, ["data.internal", "192.168.0.0/16"])

    with pytest.raises(FetchFailed, match="loopback"):
        check_url("http://localhost:8080/a.csv", settings)
    with pytest.raises(FetchFailed, match="unspecified"):
        check_url("http://0.0.0.0/a.csv", settings)
    with pytest.raises(FetchFailed, match="private"):
        check_url("http://[::ffff:10.0.0.1]/a.csv", settings)
    target = check_url("http://127.0.0.1:8080/a.csv?x=1", settings.model_copy(update={"dataset_fetch_allowlist":
                                                                                         ["127.0.0.0/8"]}))  # fmt: skip
    assert (target.url, target.host_header) == ("http://127.0.0.1:8080/a.csv?x=1", "127.0.0.1:8080")
    target = check_url("https://[::1]/a.csv", settings.model_copy(update={"dataset_fetch_allowlist": ["::1"]}))
    assert (target.url, target.host, target.host_header) == ("https://[::1]:443/a.csv", "::1", "[::1]")


def test_api_enqueues_and_a_burst_worker_fetches(
    file_server: str, live_registry: LiveServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = file_server + "/data.csv"
    request_fetch(live_registry, "queued", url)
    queue = Queue(BATCH_QUEUE, connection=sync_redis(settings), serializer=JSONSerializer)
    [job] = queue.get_jobs()
    assert (job.func_name, job.args) == ("jobs.fetch.fetch_remote_dataset", ["queued", url])
    assert dataset(live_registry, "queued")["status"] == "fetching"

    # The worker reads its settings from the environment, as `modelserve worker` does.
    for key, value in {
        "REDIS_URL": settings.redis_url or "",
        "DATA_DIR": str(settings.data_dir),
        "REGISTRY_URL": live_registry.url,
        "INTERNAL_TOKEN": TOKEN,
        "DATASET_FETCH_ALLOWLIST": '["127.0.0.1"]',
    }.items():
        monkeypatch.setenv(f"MODELSERVE_{key}", value)
    worker = build_worker(settings)
    assert worker.work(burst=True)
    job.refresh()
    assert job.get_status() == "finished"
    body = dataset(live_registry, "queued")
    assert body["status"] == "ready" and body["rows"] == 500, body
