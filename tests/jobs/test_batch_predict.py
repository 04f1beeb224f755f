"""Batch scoring in the worker: chunking, output columns, pause/continue, retries, crash recovery, schedules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer
from sqlmodel import Session

from inference.runtimes import load_runtime
from jobs import batch_runs
from jobs.batch_predict import iter_chunks, model_columns, score_chunk
from jobs.batch_runs import RUN_LEASES, execute_run
from jobs.run_recovery import recover_runs
from jobs.worker import build_worker
from registry.app import create_app
from registry.batch_schedules import RunQueue, next_fire, pending_fires
from registry.batch_tables import BatchJob
from shared.auth import INTERNAL_TOKEN_HEADER
from shared.db import create_db_engine
from shared.errors import ModelServeError
from shared.redis import BATCH_QUEUE, sync_redis
from shared.settings import Settings
from tests.conftest import LiveServer
from tests.fixtures.batch import TOKEN, iris_csv, predict_job, read_output, upload_dataset, upload_model, worker_env

COLUMNS = [{"name": "id", "type": "int64"}, {"name": "x", "type": "double"}]


# --- chunking and output columns (no registry) -------------------------------------------------------------


def _inputs(tmp_path: Path, rows: int) -> dict[str, Path]:
    ids = list(range(rows))
    (tmp_path / "in.csv").write_text("id,x\n" + "".join(f"{i},{i / 2}\n" for i in ids))
    pq.write_table(pa.table({"id": ids, "x": [i / 2 for i in ids]}), tmp_path / "in.parquet", row_group_size=7)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "x": i / 2}) + "\n" for i in ids))
    return {"csv": tmp_path / "in.csv", "parquet": tmp_path / "in.parquet", "jsonl": tmp_path / "in.jsonl"}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_chunks_have_the_asked_size_and_skip_rows_done(tmp_path: Path, fmt: str) -> None:
    path = _inputs(tmp_path, 25)[fmt]
    chunks = list(iter_chunks(path, fmt, COLUMNS, 10))
    assert [c.num_rows for c in chunks] == [10, 10, 5]
    assert [i for c in chunks for i in c.column("id").to_pylist()] == list(range(25))
    resumed = list(iter_chunks(path, fmt, COLUMNS, 10, skip=20))
    assert [c.column("id").to_pylist() for c in resumed] == [list(range(20, 25))]


def test_chunks_stream_a_large_csv_in_bounded_pieces(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_text("id,x\n" + "".join(f"{i},{i}\n" for i in range(300_000)))
    sizes = [c.num_rows for c in iter_chunks(path, "csv", COLUMNS, 65_536)]
    assert sizes == [65_536] * 4 + [300_000 - 4 * 65_536]


@pytest.mark.parametrize(
    ("model", "features", "expected"),
    [
        ("random_forest", 4, {"label", "probability_0", "probability_1", "probability_2"}),
        ("linear_regression", 3, {"value"}),
        ("kmeans", 4, {"cluster"}),
        ("pca", 4, {"component_0", "component_1"}),
    ],
)
def test_output_is_input_plus_normalised_prediction_columns(
    onnx_models: dict[str, Path], settings: Settings, model: str, features: int, expected: set[str]
) -> None:
    runtime = load_runtime(onnx_models[model], settings)
    columns = [f"f{i}" for i in range(features)]
    table = pa.table({"id": [1, 2, 3], **{c: [5.1, 3.5, 1.4][:3] for c in columns}})
    chosen = model_columns(runtime.description, table.column_names, {"X": columns})
    scored = score_chunk(runtime, table, chosen)
    assert scored.column_names[: features + 1] == ["id", *columns]
    assert expected <= set(scored.column_names[features + 1 :]), scored.column_names
    assert scored.num_rows == 3


@pytest.mark.parametrize("model", ["random_forest", "logistic_regression", "decision_tree", "gradient_boosting",
                                   "linear_regression", "random_forest_regressor", "kmeans", "pca"])  # fmt: skip
def test_columnar_scoring_gives_the_record_path_table(
    onnx_models: dict[str, Path], settings: Settings, model: str
) -> None:
    runtime = load_runtime(onnx_models[model], settings)
    [spec] = runtime.description.inputs
    width = int(spec.shape[1]) if spec.shape else 1
    rng = np.random.default_rng(7)
    columns = {f"f{i}": rng.uniform(0.1, 7.9, 500) for i in range(width)}
    columns["f0"] = np.round(columns["f0"]).astype(np.int64)  # an integer column feeds a float input too
    table = pa.table({"id": np.arange(500), **columns})
    chosen = model_columns(runtime.description, table.column_names, {spec.name: list(columns)})
    assert (
        runtime.predict_columns(  # type: ignore[attr-defined]
            {spec.name: [table.column(c).to_numpy() for c in columns]}
        )
        is not None
    ), "the columnar path was not taken"
    columnar = score_chunk(runtime, table, chosen)
    records = score_chunk(runtime, table, chosen, columnar=False)
    assert columnar.column_names == records.column_names
    assert columnar.schema == records.schema
    assert columnar.equals(records)
    if runtime.description.function_type == "classification":
        assert all(v is not None for v in columnar.column(columnar.column_names[-1]).to_pylist())


def test_a_chunk_with_a_non_number_names_its_row(onnx_models: dict[str, Path], settings: Settings) -> None:
    runtime = load_runtime(onnx_models["random_forest"], settings)
    table = pa.table({"a": ["5.1", "n/a", "6.0"], "b": [3.5, 3.0, 2.9], "c": [1.4, 1.3, 4.5], "d": [0.2, 0.2, 1.5]})
    chosen = model_columns(runtime.description, table.column_names, {"X": ["a", "b", "c", "d"]})
    with pytest.raises(ModelServeError) as caught:
        score_chunk(runtime, table, chosen)
    assert "inputs[1]" in str(caught.value.errors)


# --- through the registry and a burst worker --------------------------------------------------------------


@pytest.fixture
def live(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings.model_copy(update={"internal_token": TOKEN}))) as server:
        yield server


@pytest.fixture
def api(
    live: LiveServer, settings: Settings, onnx_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, headers={INTERNAL_TOKEN_HEADER: TOKEN}, timeout=30) as client:
        upload_model(client, "iris", onnx_models["random_forest"])
        upload_dataset(client, "scores-in", iris_csv(tmp_path / "in.csv", 45))
        worker_env(monkeypatch, settings, live.url)
        yield client


def work(settings: Settings) -> None:
    assert build_worker(settings).work(burst=True)


def run(api: httpx.Client, job: str, number: int = 1) -> dict[str, Any]:
    return dict(api.get(f"/api/v1/batch-jobs/{job}/runs/{number}").json())


def test_pause_holds_the_checkpoint_and_continue_resumes_it(
    api: httpx.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.post("/api/v1/batch-jobs", json=predict_job("p"))
    api.post("/api/v1/batch-jobs/p/runs")
    original = batch_runs.RegistryClient.progress
    calls: list[int] = []

    def pause_after_first_chunk(self: batch_runs.RegistryClient, run_id: int, body: dict[str, Any]) -> str:
        calls.append(body["rows_done"])
        if len(calls) == 1:
            assert api.post("/api/v1/batch-jobs/p/runs/1/pause").json()["requested"] == "pause"
        return original(self, run_id, body)

    monkeypatch.setattr(batch_runs.RegistryClient, "progress", pause_after_first_chunk)
    work(settings)
    paused = run(api, "p")
    assert paused["status"] == "paused" and paused["rows_done"] == 10 and calls == [10]
    assert paused["result_dataset"] is None and any("paused after row 10" in x for x in paused["log_tail"])
    assert api.post("/api/v1/batch-jobs/p/runs/1/continue").json()["status"] == "queued"
    work(settings)
    done = run(api, "p")
    assert done["status"] == "succeeded" and done["rows_done"] == 45 and done["attempt"] == 2
    assert calls[:2] == [10, 20]  # resumed at the checkpoint, not from the start
    ids = read_output(api.get("/api/v1/batch-jobs/p/runs/1/result").content)["id"]
    assert sorted(ids) == list(range(45)) and len(ids) == 45


def test_progress_is_reported_once_per_interval_not_per_chunk(
    api: httpx.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSERVE_BATCH_PROGRESS_INTERVAL_SECONDS", "3600")
    api.post("/api/v1/batch-jobs", json=predict_job("quiet"))
    api.post("/api/v1/batch-jobs/quiet/runs")
    original = batch_runs.RegistryClient.progress
    calls: list[tuple[int, str | None]] = []

    def record(self: batch_runs.RegistryClient, run_id: int, body: dict[str, Any]) -> str:
        calls.append((body["rows_done"], body["checkpoint"].get("phase")))
        return original(self, run_id, body)

    monkeypatch.setattr(batch_runs.RegistryClient, "progress", record)
    work(settings)
    assert calls == [(10, None), (45, "registering")]  # the first chunk, then the end: not 5 chunk reports
    done = run(api, "quiet")
    assert done["status"] == "succeeded" and done["rows_done"] == 45
    assert sorted(read_output(api.get("/api/v1/batch-jobs/quiet/runs/1/result").content)["id"]) == list(range(45))


def test_failing_chunk_retries_then_fails_keeping_rows(api: httpx.Client, settings: Settings, tmp_path: Path) -> None:
    upload_dataset(api, "bad-in", iris_csv(tmp_path / "bad.csv", 45, bad_row=23))
    body = predict_job("f", input_dataset="bad-in")
    api.post("/api/v1/batch-jobs", json={**body, "retries": 2, "retry_delay_seconds": 0.01})
    api.post("/api/v1/batch-jobs/f/runs")
    work(settings)
    failed = run(api, "f")
    assert failed["status"] == "failed" and failed["rows_done"] == 20, failed
    assert "chunk at row 20 failed after 3 tries" in failed["error"] and "row 23 X" in failed["error"]
    assert sum("failed (try" in line for line in failed["log_tail"]) == 3
    assert failed["result_dataset"] is None


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no report reaches the registry."""


def test_killed_worker_resumes_from_checkpoint_each_row_once(
    api: httpx.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.post("/api/v1/batch-jobs", json=predict_job("k"))
    api.post("/api/v1/batch-jobs/k/runs")
    client = sync_redis(settings)
    client.delete("rq:queue:" + BATCH_QUEUE)  # the queued RQ job is "taken" by the worker we kill below
    original = batch_runs.RegistryClient.progress
    seen: list[int] = []

    def die_on_third_report(self: batch_runs.RegistryClient, run_id: int, body: dict[str, Any]) -> str:
        seen.append(body["rows_done"])
        if len(seen) == 3:  # part 3 is on disk, its checkpoint never reported
            raise Killed
        return original(self, run_id, body)

    monkeypatch.setattr(batch_runs.RegistryClient, "progress", die_on_third_report)
    with pytest.raises(Killed):
        execute_run(1)
    monkeypatch.setattr(batch_runs.RegistryClient, "progress", original)
    crashed = run(api, "k")
    assert crashed["status"] == "running" and crashed["rows_done"] == 20
    assert client.zscore(RUN_LEASES, "1") is not None
    assert recover_runs(client, settings) == 0  # the lease has not run out yet
    client.zadd(RUN_LEASES, {"1": 0})
    assert recover_runs(client, settings) == 1
    assert recover_runs(client, settings) == 0  # queued again once, waiting for a worker
    work(settings)
    done = run(api, "k")
    assert done["status"] == "succeeded" and done["attempt"] == 2 and done["rows_done"] == 45, done
    assert any("resuming at row 20" in line for line in done["log_tail"])
    ids = read_output(api.get("/api/v1/batch-jobs/k/runs/1/result").content)["id"]
    assert sorted(ids) == list(range(45)), ids
    assert client.zscore(RUN_LEASES, "1") is None


# --- schedules ---------------------------------------------------------------------------------------------


def test_next_fire_follows_the_time_zone_and_its_daylight_saving() -> None:
    summer = next_fire("0 3 * * *", "Europe/Paris", datetime(2026, 7, 1, 0, 0, tzinfo=UTC))
    winter = next_fire("0 3 * * *", "Europe/Paris", datetime(2026, 1, 15, 0, 0, tzinfo=UTC))
    assert summer == datetime(2026, 7, 1, 1, 0, tzinfo=UTC) and winter == datetime(2026, 1, 15, 2, 0, tzinfo=UTC)
    every = next_fire("* * * * *", "Europe/Paris", datetime(2026, 3, 29, 0, 59, 30, tzinfo=UTC))
    assert every == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def _scheduled(api: httpx.Client, cron: str = "0 3 * * *") -> dict[str, Any]:
    body = {**predict_job("s"), "dispatch": "schedule", "schedule": {"cron": cron, "timezone": "Europe/Paris"}}
    resp = api.post("/api/v1/batch-jobs", json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_a_slot_fires_once_whoever_schedules_or_fires_it(api: httpx.Client, settings: Settings) -> None:
    job = _scheduled(api)
    slot = datetime.fromisoformat(job["next_run_at"])
    engine = create_db_engine(settings.effective_database_url)
    with Session(engine) as session:
        row = session.get(BatchJob, 1)
        assert row is not None
        # A second registry process (or a restart) scheduling the same slot: the deterministic id makes it a no-op.
        assert RunQueue(settings).schedule(row) == slot
        assert RunQueue(settings).schedule(row) == slot
    engine.dispose()
    assert pending_fires(settings, 1) == [f"sched-1-{int(slot.timestamp())}"]
    fires = [api.post("/internal/batch-jobs/1/fire", json={"fire_at": slot.timestamp()}).json() for _ in range(3)]
    assert fires[0]["run_id"] == 1 and [f["run_id"] for f in fires[1:]] == [None, None]
    runs = api.get("/api/v1/batch-jobs/s/runs").json()
    assert runs["total"] == 1 and runs["items"][0]["trigger"] == "schedule"
    after = datetime.fromisoformat(api.get("/api/v1/batch-jobs/s").json()["next_run_at"])
    assert after > slot and pending_fires(settings, 1) == [f"sched-1-{int(after.timestamp())}"]


def test_a_fire_missed_during_downtime_runs_once(api: httpx.Client, settings: Settings) -> None:
    _scheduled(api, cron="* * * * *")
    # The platform was down for ten minutes: the pending fire is for a slot long past.
    missed = (datetime.now(UTC) - timedelta(minutes=10)).replace(second=0, microsecond=0)
    engine = create_db_engine(settings.effective_database_url)
    with Session(engine) as session:
        row = session.get(BatchJob, 1)
        assert row is not None
        row.next_run_at = missed
        row.next_run_at = RunQueue(settings).schedule(row)
        session.add(row)
        session.commit()
    engine.dispose()
    assert pending_fires(settings, 1) == [f"sched-1-{int(missed.timestamp())}"]
    connection: redis.Redis = sync_redis(settings)
    scheduler = RQScheduler([BATCH_QUEUE], connection=connection, serializer=JSONSerializer)
    assert scheduler.acquire_locks()
    scheduler.enqueue_scheduled_jobs()  # the scheduler is back: the overdue fire is moved to the queue, once
    scheduler.enqueue_scheduled_jobs()
    scheduler.release_locks()
    work(settings)  # the fire makes one run, which the burst worker then scores
    runs = api.get("/api/v1/batch-jobs/s/runs").json()
    assert runs["total"] == 1 and runs["items"][0]["trigger"] == "schedule"
    assert runs["items"][0]["status"] == "succeeded", runs["items"][0]
    job = api.get("/api/v1/batch-jobs/s").json()
    upcoming = datetime.fromisoformat(job["next_run_at"])
    assert datetime.now(UTC) < upcoming <= datetime.now(UTC) + timedelta(minutes=1)
    assert pending_fires(settings, 1) == [f"sched-1-{int(upcoming.timestamp())}"]


def test_a_second_copy_of_a_running_run_leaves_it_alone(api: httpx.Client, settings: Settings) -> None:
    api.post("/api/v1/batch-jobs", json=predict_job("d"))
    api.post("/api/v1/batch-jobs/d/runs")
    client = sync_redis(settings)
    client.set("modelserve:batch:run-owner:1", "another-worker", ex=30)
    assert execute_run(1) == {"run": 1, "status": "busy"}
    assert run(api, "d")["status"] == "queued"
    client.delete("modelserve:batch:run-owner:1")
    work(settings)
    assert run(api, "d")["status"] == "succeeded"


# --- output formats, retries as attempts, one reader for JSON lines ---------------------------------------


def _read_result(content: bytes, fmt: str) -> pa.Table:
    import io

    import pyarrow.csv as pacsv

    if fmt == "parquet":
        return pq.read_table(io.BytesIO(content))
    if fmt == "csv":
        return pacsv.read_csv(io.BytesIO(content))
    return pa.Table.from_pylist([json.loads(line) for line in content.splitlines() if line.strip()])


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_each_output_format_runs_to_success_and_reads_back(api: httpx.Client, settings: Settings, fmt: str) -> None:
    resp = api.post("/api/v1/batch-jobs", json=predict_job(f"out-{fmt}", output_format=fmt))
    assert resp.status_code == 201, resp.text
    api.post(f"/api/v1/batch-jobs/out-{fmt}/runs")
    work(settings)
    done = run(api, f"out-{fmt}")
    assert done["status"] == "succeeded", done
    result = api.get(f"/api/v1/batch-jobs/out-{fmt}/runs/1/result")
    assert result.status_code == 200
    table = _read_result(result.content, fmt)
    assert table.num_rows == 45 and sorted(table.column("id").to_pylist()) == list(range(45))
    assert {"label", "probability_0", "probability_1", "probability_2"} <= set(table.column_names)
    assert api.get(f"/api/v1/datasets/{done['result_dataset']}").json()["format"] == fmt


def test_a_run_failing_transiently_is_retried_as_a_new_attempt(
    api: httpx.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs import batch_predict

    original = batch_predict.concatenate_parts
    failures = {"left": 2}

    def flaky(workdir: Path, parts: int, fmt: str) -> Path:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("disk briefly unavailable")
        return original(workdir, parts, fmt)

    monkeypatch.setattr(batch_predict, "concatenate_parts", flaky)
    api.post("/api/v1/batch-jobs", json={**predict_job("flaky"), "retries": 2})
    api.post("/api/v1/batch-jobs/flaky/runs")
    work(settings)
    done = run(api, "flaky")
    assert done["status"] == "succeeded" and done["attempt"] == 3, done
    assert sum("retrying in" in line for line in done["log_tail"]) == 2
    assert sorted(read_output(api.get("/api/v1/batch-jobs/flaky/runs/1/result").content)["id"]) == list(range(45))


def test_a_run_that_keeps_failing_stops_after_its_retries(
    api: httpx.Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs import batch_predict

    def broken(workdir: Path, parts: int, fmt: str) -> Path:
        raise OSError("disk gone")

    monkeypatch.setattr(batch_predict, "concatenate_parts", broken)
    api.post("/api/v1/batch-jobs", json={**predict_job("broken"), "retries": 1})
    api.post("/api/v1/batch-jobs/broken/runs")
    work(settings)
    failed = run(api, "broken")
    assert failed["status"] == "failed" and failed["attempt"] == 2, failed
    assert "disk gone" in failed["error"]


def test_json_lines_with_a_bom_nan_and_widening_numbers_score_as_inspected(
    api: httpx.Client, settings: Settings, tmp_path: Path
) -> None:
    lines = []
    for i in range(25):
        x = "NaN" if i == 3 else (str(i) if i < 12 else f"{i}.5")  # whole numbers first, fractions later
        lines.append(f'{{"id": {i}, "sepal_length": {x}, "sepal_width": 3.1, "petal_length": 1.4, "petal_width": 0.2}}')
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    info = upload_dataset(api, "bom-in", path)
    assert info["format"] == "jsonl" and info["rows"] == 25
    api.post("/api/v1/batch-jobs", json=predict_job("bom", input_dataset="bom-in"))
    api.post("/api/v1/batch-jobs/bom/runs")
    work(settings)
    done = run(api, "bom")
    assert done["status"] == "succeeded" and done["rows_done"] == 25, done
    assert sorted(read_output(api.get("/api/v1/batch-jobs/bom/runs/1/result").content)["id"]) == list(range(25))
