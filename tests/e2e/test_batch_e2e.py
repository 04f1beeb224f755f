"""Batch jobs on the running platform: kill -9 the worker mid-run, the run resumes and scores every row once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Platform, start_platform
from tests.e2e.test_services_e2e import upload, wait_for
from tests.fixtures.batch import MAPPING, iris_csv, read_output

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROWS = 50_000


@pytest.fixture
def fast_lease_platform(tmp_path: Path) -> Iterator[Platform]:
    # Every 100-row chunk reports (a registry write each): the run lasts long enough to be killed mid-way.
    env = {"MODELSERVE_BATCH_RUN_LEASE_SECONDS": "3", "MODELSERVE_BATCH_PROGRESS_INTERVAL_SECONDS": "0"}
    running = start_platform(tmp_path / "data", tmp_path / "up.log", env=env)
    yield running
    if running.process.poll() is None:
        running.stop()


@pytest.fixture
def admin_client(fast_lease_platform: Platform) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {fast_lease_platform.admin_key}"}
    with httpx.Client(base_url=fast_lease_platform.url, headers=headers, timeout=60) as client:
        yield client


def _worker_pid(platform: Platform) -> int:
    for child in platform.children():
        try:
            cmdline = child.cmdline()
        except Exception:
            continue
        if cmdline[-1:] == ["worker"]:
            return int(child.pid)
    raise AssertionError("no worker process")


def _run(admin: httpx.Client) -> dict[str, Any]:
    return dict(admin.get("/api/v1/batch-jobs/score/runs/1").json())


def test_killed_worker_resumes_and_every_row_is_scored_once(
    fast_lease_platform: Platform, admin_client: httpx.Client, onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    admin = admin_client
    upload(admin, "iris", onnx_models["random_forest"])
    data = iris_csv(tmp_path / "big.csv", ROWS).read_bytes()
    resp = admin.post("/api/v1/datasets", data={"name": "big"}, files={"file": ("big.csv", data)})
    assert resp.status_code == 201, resp.text
    job = {"name": "score", "kind": "batch_predict", "params": {
        "model": "iris", "version": "1", "input_dataset": "big", "output_dataset": "big-scored",
        "chunk_size": 100, "input_mapping": MAPPING}}  # fmt: skip
    assert admin.post("/api/v1/batch-jobs", json=job).status_code == 201
    worker = _worker_pid(fast_lease_platform)
    assert admin.post("/api/v1/batch-jobs/score/runs").status_code == 202
    mid = wait_for(lambda: (r := _run(admin))["rows_done"] >= 1_000 and r, timeout=60, what="the run under way")
    os.kill(worker, signal.SIGKILL)
    killed_at = _run(admin)["rows_done"]
    assert mid["status"] == "running" and killed_at < ROWS, "the run ended before the kill"
    done = wait_for(lambda: (r := _run(admin))["status"] in ("succeeded", "failed") and r, timeout=180,
                    what="the run to finish after the kill")  # fmt: skip
    assert done["status"] == "succeeded", done
    assert done["attempt"] >= 2 and done["rows_done"] == ROWS
    assert any("resuming at row" in line for line in done["log_tail"]), done["log_tail"]
    assert _worker_pid(fast_lease_platform) != worker
    result = admin.get("/api/v1/batch-jobs/score/runs/1/result")
    assert result.status_code == 200
    ids = read_output(result.content)["id"]
    assert len(ids) == ROWS and sorted(ids) == list(range(ROWS))
    dataset = admin.get("/api/v1/datasets/big-scored").json()
    assert dataset["rows"] == ROWS and dataset["source"] == "job"

    # A schedule every minute in Paris time shows when it fires next.
    scheduled = {**job, "name": "minutely", "dispatch": "schedule",
                 "schedule": {"cron": "* * * * *", "timezone": "Europe/Paris"}}  # fmt: skip
    created = admin.post("/api/v1/batch-jobs", json=scheduled)
    assert created.status_code == 201, created.text
    next_run = datetime.fromisoformat(created.json()["next_run_at"])
    now = datetime.now(UTC)
    assert now < next_run <= now + timedelta(seconds=61) and next_run.second == 0
    runs = wait_for(lambda: admin.get("/api/v1/batch-jobs/minutely/runs").json()["items"], timeout=90,
                    what="the scheduled fire")  # fmt: skip
    assert runs[0]["trigger"] == "schedule"
    fired_late = datetime.fromisoformat(runs[0]["created_at"]) - next_run
    assert timedelta(0) <= fired_late < timedelta(seconds=10), fired_late
    assert datetime.fromisoformat(admin.get("/api/v1/batch-jobs/minutely").json()["next_run_at"]) > next_run
