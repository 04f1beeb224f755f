"""Batch jobs through the registry API: definitions and their checks, schedules, runs with a burst worker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.worker import build_worker
from registry.app import create_app
from registry.batch_schedules import next_fire, pending_fires
from shared.auth import INTERNAL_TOKEN_HEADER
from shared.settings import Settings
from tests.conftest import LiveServer
from tests.fixtures.batch import TOKEN, iris_csv, predict_job, read_output, upload_dataset, upload_model, worker_env


async def _setup(registry: httpx.AsyncClient, onnx: Path, tmp_path: Path) -> None:
    resp = await registry.post("/api/v1/models", data={"name": "iris"}, files={"file": ("m.onnx", onnx.read_bytes())})
    assert resp.status_code == 201, resp.text
    data = iris_csv(tmp_path / "in.csv", 25).read_bytes()
    resp = await registry.post("/api/v1/datasets", data={"name": "scores-in"}, files={"file": ("in.csv", data)})
    assert resp.status_code == 201, resp.text


def _fields(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    return [e["field"] for e in resp.json()["errors"]]


async def test_definitions_are_checked_per_kind(
    registry: httpx.AsyncClient, onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    await _setup(registry, onnx_models["random_forest"], tmp_path)
    base = predict_job("j")

    async def create(**changes: Any) -> httpx.Response:
        body = {**base, **changes}
        return await registry.post("/api/v1/batch-jobs", json=body)

    params = base["params"]
    missing = {k: v for k, v in params.items() if k != "input_dataset"}
    assert _fields(await create(params=missing)) == ["params.input_dataset"]
    assert _fields(await create(params={**params, "input_dataset": "nope"})) == ["params.input_dataset"]
    assert _fields(await create(params={**params, "service": "svc"})) == ["params.service"]
    assert _fields(await create(params={**params, "output_format": "xlsx"})) == ["params.output_format"]
    assert _fields(await create(params={**params, "chunk_size": 0})) == ["params.chunk_size"]
    assert _fields(await create(params={**params, "surprise": 1})) == ["params.surprise"]
    bad_map = {**params, "input_mapping": {"X": ["sepal_length", "nope"]}}
    assert _fields(await create(params=bad_map)) == ["params.input_mapping.X"]
    no_model = {k: v for k, v in params.items() if k not in ("model", "version")}
    assert _fields(await create(params={**no_model, "service": "ghost"})) == ["params.service"]
    assert _fields(await create(dispatch="schedule")) == ["schedule"]
    bad_cron = {"cron": "61 * * * *", "timezone": "UTC"}
    assert _fields(await create(dispatch="schedule", schedule=bad_cron)) == ["schedule.cron"]
    bad_tz = {"cron": "* * * * *", "timezone": "Mars/Olympus"}
    assert _fields(await create(dispatch="schedule", schedule=bad_tz)) == ["schedule.timezone"]
    script = await registry.post("/api/v1/batch-jobs", json={"name": "s", "kind": "script", "params": {"code": "1"}})
    assert script.status_code == 403 and script.headers["content-type"].startswith("application/problem+json")

    created = await create()
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["params"]["output_format"] == "csv" and body["params"]["reuse_cached_result"] is False
    assert body["next_run_at"] is None and body["last_run"] is None
    assert (await create()).status_code == 409
    listed = (await registry.get("/api/v1/batch-jobs")).json()
    assert listed["total"] == 1 and listed["items"][0]["name"] == "j"
    patched = await registry.patch("/api/v1/batch-jobs/j", json={"retries": 3, "description": "nightly"})
    assert patched.status_code == 200 and patched.json()["retries"] == 3
    assert _fields(await registry.patch("/api/v1/batch-jobs/j", json={"params": {**params, "chunk_size": -1}})) == [
        "params.chunk_size"
    ]
    # A dataset a job reads cannot be deleted.
    used = await registry.delete("/api/v1/datasets/scores-in")
    assert used.status_code == 409 and "j" in used.json()["detail"]
    assert (await registry.delete("/api/v1/batch-jobs/j")).status_code == 204
    assert (await registry.get("/api/v1/batch-jobs/j")).status_code == 404
    assert (await registry.delete("/api/v1/datasets/scores-in")).status_code == 204


async def test_schedule_keeps_one_pending_fire(
    registry: httpx.AsyncClient, db_settings: Settings, onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    await _setup(registry, onnx_models["random_forest"], tmp_path)
    schedule = {"cron": "0 3 * * *", "timezone": "Europe/Paris"}
    before = datetime.now(UTC)
    resp = await registry.post("/api/v1/batch-jobs", json={**predict_job("n"), "dispatch": "schedule",
                                                           "schedule": schedule})  # fmt: skip
    assert resp.status_code == 201, resp.text
    job = resp.json()
    expected = next_fire("0 3 * * *", "Europe/Paris", before)
    assert datetime.fromisoformat(job["next_run_at"]) == expected
    assert expected.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris")).hour == 3
    [job_id_fire] = pending_fires(db_settings, 1)
    assert job_id_fire == f"sched-1-{int(expected.timestamp())}"

    changed = await registry.patch("/api/v1/batch-jobs/n", json={"schedule": {"cron": "30 4 * * *",
                                                                              "timezone": "Asia/Tokyo"}})  # fmt: skip
    new_fire = datetime.fromisoformat(changed.json()["next_run_at"])
    assert new_fire != expected and pending_fires(db_settings, 1) == [f"sched-1-{int(new_fire.timestamp())}"]

    paused = (await registry.post("/api/v1/batch-jobs/n/schedule/pause")).json()
    assert paused["schedule_paused"] is True and paused["next_run_at"] is None
    assert pending_fires(db_settings, 1) == []
    resumed = (await registry.post("/api/v1/batch-jobs/n/schedule/resume")).json()
    assert resumed["next_run_at"] is not None and len(pending_fires(db_settings, 1)) == 1
    on_demand = (await registry.patch("/api/v1/batch-jobs/n", json={"dispatch": "on_demand"})).json()
    assert on_demand["next_run_at"] is None and pending_fires(db_settings, 1) == []
    await registry.patch("/api/v1/batch-jobs/n", json={"dispatch": "schedule"})
    assert len(pending_fires(db_settings, 1)) == 1
    assert (await registry.delete("/api/v1/batch-jobs/n")).status_code == 204
    assert pending_fires(db_settings, 1) == []


# --- runs with a live registry and a burst worker ----------------------------------------------------------


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings.model_copy(update={"internal_token": TOKEN}))) as server:
        yield server


@pytest.fixture
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, headers={INTERNAL_TOKEN_HEADER: TOKEN}, timeout=30) as client:
        yield client


@pytest.fixture
def ready(
    api: httpx.Client, live: LiveServer, settings: Settings, onnx_models: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> httpx.Client:  # fmt: skip
    upload_model(api, "iris", onnx_models["random_forest"])
    upload_dataset(api, "scores-in", iris_csv(tmp_path / "in.csv", 25))
    worker_env(monkeypatch, settings, live.url)
    return api


def work(settings: Settings) -> None:
    assert build_worker(settings).work(burst=True)


def test_run_lifecycle_result_and_cache(ready: httpx.Client, settings: Settings) -> None:
    api = ready
    assert api.post("/api/v1/batch-jobs", json=predict_job("score", reuse_cached_result=True)).status_code == 201
    started = api.post("/api/v1/batch-jobs/score/runs")
    assert started.status_code == 202, started.text
    assert started.headers["location"] == "/api/v1/batch-jobs/score/runs/1"
    assert started.json()["status"] == "queued" and started.json()["trigger"] == "manual"
    work(settings)
    run = api.get("/api/v1/batch-jobs/score/runs/1").json()
    assert run["status"] == "succeeded", run
    assert (run["rows_done"], run["rows_total"], run["progress"], run["attempt"]) == (25, 25, 1.0, 1)
    assert run["result_dataset"] == "score-out" and run["duration_seconds"] >= 0
    assert any("registered" in line for line in run["log_tail"])
    out = api.get("/api/v1/datasets/score-out").json()
    assert out["source"] == "job" and out["rows"] == 25
    names = [c["name"] for c in out["columns"]]
    assert names[:5] == ["id", "sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert "label" in names and any(n.startswith("probability_") for n in names)
    result = api.get("/api/v1/batch-jobs/score/runs/1/result")
    assert result.status_code == 200 and sorted(read_output(result.content)["id"]) == list(range(25))

    # Same model version, same input bytes: the second run reuses the first output.
    api.post("/api/v1/batch-jobs/score/runs")
    work(settings)
    second = api.get("/api/v1/batch-jobs/score/runs/2").json()
    assert second["status"] == "succeeded" and second["cached_from"] == {"job": "score", "run": 1}
    assert second["result_dataset"] == "score-out"
    page = api.get("/api/v1/batch-jobs/score/runs", params={"limit": 1}).json()
    assert page["total"] == 2 and [r["number"] for r in page["items"]] == [2]
    assert api.get("/api/v1/batch-jobs/score").json()["last_run"]["number"] == 2
    assert api.delete("/api/v1/batch-jobs/score/runs/2").status_code == 204
    assert api.get("/api/v1/batch-jobs/score/runs/2").status_code == 404


def test_operations_on_a_queued_run(ready: httpx.Client, settings: Settings) -> None:
    api = ready
    api.post("/api/v1/batch-jobs", json=predict_job("ops"))
    api.post("/api/v1/batch-jobs/ops/runs")
    assert api.delete("/api/v1/batch-jobs/ops/runs/1").status_code == 409
    assert api.delete("/api/v1/batch-jobs/ops").status_code == 409
    assert api.post("/api/v1/batch-jobs/ops/runs/1/pause").json()["status"] == "paused"
    work(settings)  # the queued RQ job finds the run paused and leaves it
    assert api.get("/api/v1/batch-jobs/ops/runs/1").json()["status"] == "paused"
    assert api.post("/api/v1/batch-jobs/ops/runs/1/continue").json()["status"] == "queued"
    work(settings)
    assert api.get("/api/v1/batch-jobs/ops/runs/1").json()["status"] == "succeeded"
    again = api.post("/api/v1/batch-jobs/ops/runs/1/stop")
    assert again.status_code == 409 and again.json()["run_status"] == "succeeded"
    api.post("/api/v1/batch-jobs/ops/runs")
    assert api.post("/api/v1/batch-jobs/ops/runs/2/stop").json()["status"] == "stopped"
    work(settings)
    assert api.get("/api/v1/batch-jobs/ops/runs/2").json()["status"] == "stopped"
    assert api.get("/api/v1/batch-jobs/ops/runs/2/result").status_code == 404
    assert api.post("/api/v1/batch-jobs/ops/runs/2/continue").status_code == 409
    assert api.delete("/api/v1/batch-jobs/ops").status_code == 204


# --- the script kind ---------------------------------------------------------------------------------------

SCRIPT = """
import csv, sys
rows = list(csv.DictReader(open("scores-in.csv")))
print("read", len(rows), "rows", sys.argv[1:])
with open("output/summary.csv", "w") as fh:
    fh.write("rows,arg\\n%d,%s\\n" % (len(rows), sys.argv[1]))
"""


async def test_script_jobs_answer_501_while_the_runner_is_missing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry import batch_jobs
    from tests.conftest import asgi_client

    monkeypatch.setattr(batch_jobs, "SCRIPT_RUNNER", "jobs.not_written_yet")
    app = create_app(settings.model_copy(update={"script_jobs_enabled": True}))
    async with asgi_client(app) as client:
        resp = await client.post("/api/v1/batch-jobs", json={"name": "s", "kind": "script", "params": {"code": "1"}})
    assert resp.status_code == 501 and resp.json()["detail"] == "Script jobs are not available yet on this platform"


def test_script_job_outputs_become_datasets(
    settings: Settings, onnx_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enabled = settings.model_copy(update={"internal_token": TOKEN, "script_jobs_enabled": True})
    with (
        LiveServer(create_app(enabled)) as server,
        httpx.Client(base_url=server.url, headers={INTERNAL_TOKEN_HEADER: TOKEN}, timeout=30) as api,
    ):
        upload_dataset(api, "scores-in", iris_csv(tmp_path / "in.csv", 25))
        worker_env(monkeypatch, settings, server.url)
        monkeypatch.setenv("MODELSERVE_SCRIPT_JOBS_ENABLED", "true")
        bad = api.post("/api/v1/batch-jobs", json={"name": "s", "kind": "script",
                                                   "params": {"code": "1", "interpreter": "ruby"}})  # fmt: skip
        assert _fields(bad) == ["params.interpreter"]
        params = {"code": SCRIPT, "args": ["hello"], "input_datasets": ["scores-in"]}
        assert api.post("/api/v1/batch-jobs", json={"name": "s", "kind": "script", "params": params}).status_code == 201
        api.post("/api/v1/batch-jobs/s/runs")
        work(settings)
        run = api.get("/api/v1/batch-jobs/s/runs/1").json()
        assert run["status"] == "succeeded", run
        assert run["result_dataset"] == "s-1-summary"
        assert any("read 25 rows ['hello']" in line for line in run["log_tail"]), run["log_tail"]
        summary = api.get("/api/v1/datasets/s-1-summary").json()
        assert summary["source"] == "job" and summary["preview"] == [{"rows": 25, "arg": "hello"}]
        assert api.delete("/api/v1/datasets/scores-in").status_code == 409


def test_a_run_whose_model_is_gone_fails_with_the_reason(ready: httpx.Client, settings: Settings) -> None:
    api = ready
    api.post("/api/v1/batch-jobs", json=predict_job("gone"))
    api.post("/api/v1/batch-jobs/gone/runs")
    assert api.delete("/api/v1/models/iris").status_code == 204
    work(settings)
    run = api.get("/api/v1/batch-jobs/gone/runs/1").json()
    assert run["status"] == "failed" and "Model 'iris' does not exist" in run["error"], run
    assert run["finished_at"] is not None


async def test_a_restarted_registry_puts_the_pending_fire_back(
    settings: Settings, onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    import redis

    from tests.conftest import asgi_client

    async with asgi_client(create_app(settings)) as client:
        await _setup(client, onnx_models["random_forest"], tmp_path)
        body = {**predict_job("r"), "dispatch": "schedule", "schedule": {"cron": "*/5 * * * *", "timezone": "UTC"}}
        job = (await client.post("/api/v1/batch-jobs", json=body)).json()
    redis.Redis.from_url(str(settings.redis_url)).flushdb()  # Redis lost everything meanwhile
    assert pending_fires(settings, 1) == []
    async with asgi_client(create_app(settings)) as client:
        again = (await client.get("/api/v1/batch-jobs/r")).json()
    assert again["next_run_at"] == job["next_run_at"]
    slot = datetime.fromisoformat(job["next_run_at"])
    assert pending_fires(settings, 1) == [f"sched-1-{int(slot.timestamp())}"]


def test_a_deleted_runs_number_is_never_given_again(ready: httpx.Client) -> None:
    api = ready
    api.post("/api/v1/batch-jobs", json=predict_job("nightly"))
    for _ in range(2):
        assert api.post("/api/v1/batch-jobs/nightly/runs").status_code == 202
    for number in (2, 1):  # the newest first: a max()+1 numbering would give 2 again, then 1
        assert api.post(f"/api/v1/batch-jobs/nightly/runs/{number}/stop").json()["status"] == "stopped"
        assert api.delete(f"/api/v1/batch-jobs/nightly/runs/{number}").status_code == 204
    third = api.post("/api/v1/batch-jobs/nightly/runs").json()
    assert third["number"] == 3 and third["name"] == "nightly#3"
    page = api.get("/api/v1/batch-jobs/nightly/runs").json()
    assert [r["name"] for r in page["items"]] == ["nightly#3"]


SLOW_SCRIPT = """
import time
print("started", flush=True)
time.sleep(5)
print("done", flush=True)
"""


def test_a_script_jobs_control_polls_leave_its_checkpoint_alone(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlmodel import Session

    from jobs import batch_runs
    from registry.batch_tables import Run
    from shared.db import create_db_engine

    enabled = settings.model_copy(update={"internal_token": TOKEN, "script_jobs_enabled": True})
    bodies: list[dict[str, Any]] = []
    checkpoints: list[Any] = []
    original = batch_runs.RegistryClient.progress
    engine = create_db_engine(settings.effective_database_url)

    def record(self: batch_runs.RegistryClient, run_id: int, body: dict[str, Any]) -> str:
        bodies.append(body)
        answer = original(self, run_id, body)
        with Session(engine) as session:
            row = session.get(Run, run_id)
            checkpoints.append(row.checkpoint if row else None)
        return answer

    with (
        LiveServer(create_app(enabled)) as server,
        httpx.Client(base_url=server.url, headers={INTERNAL_TOKEN_HEADER: TOKEN}, timeout=30) as api,
    ):
        worker_env(monkeypatch, settings, server.url)
        monkeypatch.setenv("MODELSERVE_SCRIPT_JOBS_ENABLED", "true")
        monkeypatch.setattr(batch_runs.RegistryClient, "progress", record)
        body = {"name": "slow", "kind": "script", "params": {"code": SLOW_SCRIPT}}
        assert api.post("/api/v1/batch-jobs", json=body).status_code == 201
        api.post("/api/v1/batch-jobs/slow/runs")
        work(settings)
        run = api.get("/api/v1/batch-jobs/slow/runs/1").json()
    engine.dispose()
    assert run["status"] == "succeeded", run
    assert bodies, "the script was never polled for a stop"
    assert all("checkpoint" not in b and "rows_done" not in b for b in bodies), bodies
    # The checkpoint the claim saved (the params the run started with) is still there after every poll.
    assert checkpoints and all(c and c.get("params", {}).get("code") == SLOW_SCRIPT for c in checkpoints)


async def test_integers_past_64_bits_are_a_422_on_both_databases(
    registry: httpx.AsyncClient, onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    await _setup(registry, onnx_models["random_forest"], tmp_path)
    assert (await registry.post("/api/v1/batch-jobs", json=predict_job("j"))).status_code == 201
    for url, field in [
        (f"/api/v1/batch-jobs/j/runs/{2**63}", "path.run"),
        (f"/api/v1/models/iris/versions/{2**64}", "path.version"),
        (f"/api/v1/datasets?offset={2**63}", "query.offset"),
    ]:
        resp = await registry.get(url)
        assert resp.status_code == 422, (url, resp.text)
        assert [e["field"] for e in resp.json()["errors"]] == [field], resp.text
