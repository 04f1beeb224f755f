"""Faults on the running platform, with exact counts: a second `up`, Redis killed with accepted jobs, the
registry killed while its services serve."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import Platform
from tests.e2e.test_async_e2e import statuses
from tests.e2e.test_services_e2e import IRIS, Load, running, upload, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


_UP = [sys.executable, "-m", "modelserve.server", "up"]


def _child(platform: Platform, needle: str) -> psutil.Process:
    return next(p for p in platform.children() if needle in " ".join(p.cmdline()))


def _replica_pids(platform: Platform, service: str) -> set[int]:
    pids = set()
    for process in platform.children():
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if "--service" in cmdline and cmdline[cmdline.index("--service") + 1] == service:
            pids.add(process.pid)
    return pids


def test_second_up_on_the_same_data_dir_refuses_and_touches_nothing(platform: Platform, tmp_path: Path) -> None:
    metrics_dir = platform.data_dir / "run" / "metrics"
    before = {p.name for p in metrics_dir.iterdir()}
    assert before  # the first instance's processes write their metrics there
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
    second_port = free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelserve.server",
            "up",
            "--port",
            str(second_port),
            "--data-dir",
            str(platform.data_dir),
        ],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    message = result.stderr
    assert str(platform.data_dir) in message and platform.url in message, message
    assert f"pid {platform.process.pid}" in message, message
    # It started nothing: no second gateway port, no second Redis or registry on the same files.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{second_port}/health/live", timeout=2)
    assert len([p for p in platform.children() if "redis-server" in " ".join(p.cmdline())]) == 1
    # The first instance is untouched and still serves.
    assert before <= {p.name for p in metrics_dir.iterdir()}
    assert httpx.get(f"{platform.url}/health/ready", timeout=10).status_code == 200
    assert "modelserve_process_up" in httpx.get(f"{platform.url}/metrics", timeout=10).text


def test_accepted_jobs_survive_a_kill_9_of_redis(
    platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path]
) -> None:
    upload(admin, "iris", onnx_models["random_forest"])
    assert admin.post("/api/v1/services", json={"name": "iris", "model": "iris"}).status_code == 201
    wait_for(lambda: running(admin, "iris"), what="service running")
    redis_proc = _child(platform, "redis-server")
    accepted: list[str] = []
    refused: list[int] = []

    def submit() -> None:
        with httpx.Client(base_url=platform.url, headers=dict(admin.headers), timeout=30) as client:
            for _ in range(200):
                try:
                    resp = client.post("/api/v1/services/iris/jobs", json=IRIS)
                except httpx.HTTPError:
                    continue
                if resp.status_code == 202:
                    accepted.append(resp.json()["id"])
                else:
                    refused.append(resp.status_code)

    thread = threading.Thread(target=submit)
    thread.start()
    wait_for(lambda: len(accepted) >= 50, timeout=60, what="50 accepted jobs")
    redis_proc.kill()  # SIGKILL while submissions are being accepted: only what is fsynced survives
    thread.join(120)
    assert len(accepted) >= 50
    wait_for(lambda: "restarted redis" in platform.log.read_text(), timeout=30, what="redis restarted")

    def all_succeeded() -> bool:
        try:
            return statuses(admin, accepted).get("succeeded", 0) == len(accepted)
        except (httpx.HTTPError, KeyError, ValueError):
            return False

    try:
        wait_for(all_succeeded, timeout=120, what="every accepted job succeeded")
    except BaseException:
        print("accepted", len(accepted), "refused", refused[:20], "statuses", statuses(admin, accepted))
        raise
    assert statuses(admin, accepted) == {"succeeded": len(accepted)}


def test_serving_survives_a_kill_9_of_the_registry(
    platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path]
) -> None:
    upload(admin, "iris", onnx_models["random_forest"])
    created = admin.post("/api/v1/services", json={"name": "iris", "model": "iris", "replicas": 2})
    assert created.status_code == 201, created.text
    wait_for(lambda: running(admin, "iris"), what="service running")
    replicas = _replica_pids(platform, "iris")
    assert len(replicas) == 2
    key = admin.post("/api/v1/keys", json={"name": "app", "scopes": ["predict"]}).json()["key"]
    registry = _child(platform, "modelserve.server registry")

    with Load(platform.url, key, "iris", threads=2) as load:
        wait_for(lambda: len(load.results) >= 20, what="predicts before the kill")
        registry.kill()
        wait_for(lambda: "restarted registry" in platform.log.read_text(), timeout=30, what="registry restarted")
        wait_for(lambda: _ok(f"{platform.url}/health/ready"), timeout=60, what="platform ready again")
        served = len(load.results)
        wait_for(lambda: len(load.results) >= served + 20, what="predicts after the restart")
    assert load.errors == [], load.errors[:5]
    assert set(load.results) == {200}

    # The restarted registry re-adopted the same two processes: no new replicas, no duplicates.
    assert _replica_pids(platform, "iris") == replicas
    body = wait_for(lambda: running(admin, "iris"), what="service running after the restart")
    assert {r["pid"] for r in body["replica_list"]} == replicas
    assert "re-adopted replica" in platform.log.read_text()

    children = platform.children()
    assert platform.stop() == 0
    _gone, alive = psutil.wait_procs(children, timeout=15)
    assert alive == [], [p.pid for p in alive]
    for pid in replicas:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_replicas_stop_when_up_dies_by_sigkill(
    platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path]
) -> None:
    upload(admin, "iris", onnx_models["random_forest"])
    assert admin.post("/api/v1/services", json={"name": "iris", "model": "iris"}).status_code == 201
    wait_for(lambda: running(admin, "iris"), what="service running")
    everything = platform.children()
    os.kill(platform.process.pid, signal.SIGKILL)
    platform.process.wait(10)
    _gone, alive = psutil.wait_procs(everything, timeout=30)
    assert alive == [], [(p.pid, p.cmdline()) for p in alive]


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
