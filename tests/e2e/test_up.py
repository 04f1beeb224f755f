"""`modelserve up` as a user runs it: ready, health, metrics, auth, restart of a dead child, clean stop, restart."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.conftest import Platform, start_platform

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
