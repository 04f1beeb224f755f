"""Wait return on the running platform: submit, poll, long-poll, cancel, callbacks, and nothing lost."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import free_port
from tests.e2e.conftest import Platform, start_platform
from tests.e2e.test_services_e2e import running, upload, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
IRIS = {"inputs": {"X": [5.1, 3.5, 1.4, 0.2]}}


def deploy(admin: httpx.Client, onnx_models: dict[str, Path], name: str = "iris") -> None:
    upload(admin, name, onnx_models["random_forest"])
    assert admin.post("/api/v1/services", json={"name": name, "model": name}).status_code == 201
    wait_for(lambda: running(admin, name), what="service running")


def submit_many(client: httpx.Client, service: str, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        resp = client.post(f"/api/v1/services/{service}/jobs", json=IRIS)
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    return ids


def statuses(client: httpx.Client, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job_id in ids:
        status = client.get(f"/api/v1/jobs/{job_id}").json()["status"]
        counts[status] = counts.get(status, 0) + 1
    return counts


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_submit_poll_cancel_list_and_callback(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    hook_port = free_port()
    server = HTTPServer(("127.0.0.1", hook_port), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    platform = start_platform(
        tmp_path / "data", tmp_path / "up.log", {"MODELSERVE_CALLBACK_ALLOWED_HOSTS": '["127.0.0.1"]'}
    )
    try:
        admin = httpx.Client(
            base_url=platform.url, headers={"Authorization": f"Bearer {platform.admin_key}"}, timeout=30
        )
        deploy(admin, onnx_models)
        accepted = admin.post("/api/v1/services/iris/jobs", json=IRIS)
        assert accepted.status_code == 202
        job = accepted.json()
        assert job["status"] == "queued" and accepted.headers["location"] == job["url"] and len(job["id"]) >= 24
        done = admin.get(f"{job['url']}?wait=10").json()
        assert done["status"] == "succeeded", done
        assert done["predictions"][0]["label"] == 0 and done["started_at"] and done["finished_at"]
        assert admin.get(f"{job['url']}?wait=61").status_code == 422

        failing = admin.post("/api/v1/services/iris/jobs", json={"inputs": {"X": "bad"}}).json()
        failed = admin.get(f"/api/v1/jobs/{failing['id']}?wait=10").json()
        assert failed["status"] == "failed" and failed["error"]["errors"][0]["field"] == "inputs[0].X"
        assert admin.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "succeeded"  # a poison job stops nothing

        assert admin.delete(job["url"]).status_code == 409
        assert admin.post("/api/v1/services/iris/jobs", json={"nope": 1}).status_code == 422
        refused = admin.post("/api/v1/services/iris/jobs", json={**IRIS, "callback_url": "http://10.0.0.1/x"})
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "callback_url"
        assert admin.post("/api/v1/services/nope/jobs", json=IRIS).status_code == 404

        hooked = admin.post(
            "/api/v1/services/iris/jobs",
            json={**IRIS, "callback_url": f"http://127.0.0.1:{hook_port}/hook", "ttl_seconds": 60},
        ).json()
        wait_for(lambda: _Hook.received, timeout=20, what="callback")
        assert _Hook.received[0]["id"] == hooked["id"] and _Hook.received[0]["status"] == "succeeded"

        listed = admin.get("/api/v1/services/iris/jobs", params={"status": "succeeded"}).json()
        assert {hooked["id"], job["id"]} <= {j["id"] for j in listed["items"]}
        assert all(j["status"] == "succeeded" for j in listed["items"])

        other = admin.post("/api/v1/keys", json={"name": "o", "scopes": ["predict"], "services": ["other"]}).json()
        with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {other['key']}"}) as stranger:
            assert stranger.get(job["url"]).status_code == 404
        admin.close()
    finally:
        platform.stop()
        server.shutdown()


def test_cancel_a_queued_job(platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path]) -> None:
    deploy(admin, onnx_models)
    worker = next(p for p in platform.children() if "worker" in p.cmdline())
    worker.suspend()  # nothing runs: jobs stay queued
    try:
        job = admin.post("/api/v1/services/iris/jobs", json=IRIS).json()
        cancelled = admin.delete(job["url"])
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    finally:
        worker.resume()
    time.sleep(1)
    assert admin.get(job["url"]).json()["status"] == "cancelled"


def test_worker_killed_while_holding_jobs_loses_none(tmp_path: Path, onnx_models: dict[str, Path]) -> None:
    platform = start_platform(tmp_path / "data", tmp_path / "up.log", {"MODELSERVE_JOB_LEASE_SECONDS": "3"})
    try:
        admin = httpx.Client(
            base_url=platform.url, headers={"Authorization": f"Bearer {platform.admin_key}"}, timeout=30
        )
        deploy(admin, onnx_models)
        worker = next(p for p in platform.children() if "worker" in p.cmdline())
        worker.suspend()  # the worker takes a batch, then is killed before it can finish
        ids = submit_many(admin, "iris", 300)
        worker.resume()
        time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        seen: dict[str, int] = {}

        def all_succeeded() -> bool:
            seen.clear()
            seen.update(statuses(admin, ids))
            return seen.get("succeeded", 0) == len(ids)

        try:
            wait_for(all_succeeded, timeout=90, what="all jobs to end")
        except BaseException:
            print("job statuses:", seen)
            print(platform.log.read_text()[-6000:])
            raise
        assert "restarted worker" in platform.log.read_text()
        admin.close()
    finally:
        platform.stop()


def test_redis_restart_with_jobs_queued_completes_them(
    platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path]
) -> None:
    deploy(admin, onnx_models)
    worker = next(p for p in platform.children() if "worker" in p.cmdline())
    worker.suspend()
    ids = submit_many(admin, "iris", 50)
    time.sleep(1.5)  # > appendfsync everysec: the queue is on disk
    redis_proc = next(p for p in platform.children() if "redis-server" in " ".join(p.cmdline()))
    redis_proc.terminate()
    psutil.wait_procs([redis_proc], timeout=10)
    worker.resume()
    wait_for(lambda: "restarted redis" in platform.log.read_text(), timeout=30, what="redis restarted")
    wait_for(lambda: _safe_statuses(admin, ids).get("succeeded", 0) == len(ids), timeout=90, what="jobs after restart")


def _safe_statuses(client: httpx.Client, ids: list[str]) -> dict[str, int]:
    try:
        return statuses(client, ids)
    except (httpx.HTTPError, KeyError):
        return {}
