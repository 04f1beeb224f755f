"""`modelserve up` as a user runs it: ready, health, metrics, auth, restart of a dead child, clean stop, restart."""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from shared.redis import PREDICT_QUEUE
from tests.e2e.conftest import Platform, start_platform
from tests.e2e.test_services_e2e import running, upload, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_up_serves_health_metrics_auth_and_stops_cleanly(platform: Platform, admin: httpx.Client) -> None:
    assert platform.admin_key.startswith("msk_")
    ready = httpx.get(f"{platform.url}/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["checks"]) >= {"registry", "inference", "redis", "worker", "scheduler"}

    assert httpx.get(f"{platform.url}/api/v1/keys").status_code == 401
    created = admin.post("/api/v1/keys", json={"name": "app", "scopes": ["predict"]})
    assert created.status_code == 201
    predict_headers = {"Authorization": f"Bearer {created.json()['key']}"}
    assert httpx.get(f"{platform.url}/api/v1/keys", headers=predict_headers).status_code == 403
    assert admin.get("/api/v1/keys").status_code == 200

    metrics = httpx.get(f"{platform.url}/metrics").text
    for process in ("gateway", "registry", "inference", "worker", "scheduler"):
        assert f'modelserve_process_up{{process="{process}"}} 1.0' in metrics, process
    assert 'modelserve_http_requests_total{method="GET",process="registry"' in metrics
    assert "modelserve_queue_depth" in metrics

    children = platform.children()
    assert len(children) >= 6  # redis, registry, inference, worker, scheduler, gateway
    assert platform.stop() == 0
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.pid for p in alive]
    after_banner = platform.log.read_text().split("Press Ctrl-C to stop.", 1)[1]
    assert platform.admin_key not in after_banner


def test_dead_child_is_restarted_and_logged(platform: Platform) -> None:
    worker = next(p for p in platform.children() if "worker" in p.cmdline())
    worker.kill()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = platform.log.read_text()
        if "restarted worker" in log:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker was not restarted")
    new = [p for p in platform.children() if "worker" in p.cmdline()]
    assert new and new[0].pid != worker.pid
    for _ in range(100):
        if httpx.get(f"{platform.url}/health/ready").status_code == 200:
            break
        time.sleep(0.2)
    metrics = httpx.get(f"{platform.url}/metrics").text
    assert 'modelserve_process_restarts_total{process="worker"} 1.0' in metrics


def test_second_up_finds_everything_again(tmp_path: Path) -> None:
    first = start_platform(tmp_path / "data", tmp_path / "first.log")
    key = first.admin_key
    created = httpx.post(
        f"{first.url}/api/v1/keys", json={"name": "kept"}, headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert first.stop() == 0
    second = start_platform(tmp_path / "data", tmp_path / "second.log")
    try:
        assert second.admin_key == ""  # not generated again, not printed again
        names = httpx.get(f"{second.url}/api/v1/keys", headers={"Authorization": f"Bearer {key}"}).json()
        assert created["id"] in {k["id"] for k in names["items"]}
    finally:
        second.stop()


def test_up_keeps_secrets_and_data_private(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    admin_key = "msk_e2eadmin_" + "k" * 40
    env = {"MODELSERVE_ADMIN_KEY": admin_key, "MODELSERVE_HTTP_HEADER_TIMEOUT_SECONDS": "2"}
    platform = start_platform(tmp_path / "data", tmp_path / "up.log", env)
    admin = httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    try:
        upload(admin, "iris", onnx_models["random_forest"])
        assert admin.post("/api/v1/services", json={"name": "iris", "model": "iris"}).status_code == 201
        wait_for(lambda: running(admin, "iris"), what="service running")
        data = platform.data_dir

        # The data directory and the secrets in it are the user's only.
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        for secret in ("secrets/redis-password", "secrets/internal-token", "modelserve.lock", "redis/redis.conf"):
            assert stat.S_IMODE((data / secret).stat().st_mode) == 0o600, secret
        assert stat.S_IMODE((data / "modelserve.db").stat().st_mode) & 0o077 == 0
        password = (data / "secrets" / "redis-password").read_text().strip()
        token = (data / "secrets" / "internal-token").read_text().strip()

        # Redis: no access without the password, no CONFIG with it, the password on no command line.
        redis_proc = next(p for p in platform.children() if "redis-server" in " ".join(p.cmdline()))
        port = next(c.laddr.port for c in redis_proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).set("k", "v")
        authed = redis.Redis(port=port, password=password, socket_timeout=5)
        assert authed.ping()
        with pytest.raises(redis.ResponseError):
            authed.config_set("dir", "/tmp")
        # Even with the password, the platform's worker runs no function but its own tasks.
        marker = tmp_path / "pwned"
        queue = Queue(PREDICT_QUEUE, connection=authed, serializer=JSONSerializer)
        job = queue.enqueue("os.system", f"touch {marker}")
        wait_for(lambda: job.get_status(refresh=True) == JobStatus.FAILED, what="the worker refused the job")
        assert not marker.exists()

        # Every child (a replica included) has only the secrets it needs: never the admin key.
        everything = platform.children()
        replica = [p for p in everything if "--service" in p.cmdline()]
        worker = [p for p in everything if p.cmdline()[-1:] == ["worker"]]
        assert replica and worker
        for process in everything:
            environ = process.environ()
            assert "MODELSERVE_ADMIN_KEY" not in environ, process.cmdline()
            assert admin_key not in " ".join(environ.values()), process.cmdline()
            assert password not in " ".join(process.cmdline())
        assert password in worker[0].environ()["MODELSERVE_REDIS_URL"]

        # A client that never finishes its request head is cut off; the gateway goes on serving.
        with socket.create_connection(("127.0.0.1", int(platform.url.rsplit(":", 1)[1]))) as slow:
            slow.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            slow.settimeout(30)
            assert slow.recv(4096).startswith(b"HTTP/1.1 408")
        assert httpx.get(f"{platform.url}/health/ready", timeout=10).status_code == 200

        log = platform.log.read_text()
        for secret in (admin_key, password, token):
            assert secret not in log
    finally:
        admin.close()
        platform.stop()
