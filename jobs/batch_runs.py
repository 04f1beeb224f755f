"""RQ tasks of batch jobs: run one (claim it from the registry, do it, report it) and fire a schedule slot.

A running run holds a lease in Redis (`RUN_LEASES`, renewed by a thread); a worker killed mid-run stops renewing
it and `jobs.run_recovery` queues the run again, which resumes from the checkpoint the registry holds.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from rq import get_current_job

from jobs.batch_predict import ChunkFailed, Outcome, RunContext, run_batch_predict
from shared.auth import INTERNAL_TOKEN_HEADER
from shared.jobstore import now
from shared.leases import Lease
from shared.redis import sync_redis
from shared.settings import Settings

log = logging.getLogger(__name__)
RUN_LEASES = "modelserve:batch:run-leases"
"""ZSET run id -> time its lease ends."""
RUN_INFO = "modelserve:batch:run:{run_id}"
"""HASH of a leased run: `rq_job` (the RQ job running it), `recoveries`."""
RUN_OWNER = "modelserve:batch:run-owner:{run_id}"
"""Held (with a TTL the lease renews) by the one worker running a run: a second copy of its RQ job waits out."""
RUN_TASK = "jobs.batch_runs.execute_run"


def run_info_key(run_id: int | str) -> str:
    return RUN_INFO.format(run_id=run_id)


def run_workdir(settings: Settings, run_id: int) -> Path:
    return settings.data_dir / "batch-runs" / str(run_id)


class RegistryClient:
    """The registry's internal batch endpoints over HTTP (workers never open the database)."""

    def __init__(self, settings: Settings) -> None:
        headers = {INTERNAL_TOKEN_HEADER: settings.internal_token} if settings.internal_token else {}
        self.http = httpx.Client(base_url=settings.registry_url, headers=headers,
                                 timeout=settings.request_timeout_seconds)  # fmt: skip

    def close(self) -> None:
        self.http.close()

    def _post(self, path: str, body: dict[str, Any], tries: int = 5) -> httpx.Response:
        for attempt in range(tries):
            try:
                return self.http.post(path, json=body)
            except httpx.TransportError:
                if attempt == tries - 1:
                    raise
                time.sleep(min(10, 2**attempt))
        raise AssertionError("unreachable")

    def claim(self, run_id: int) -> dict[str, Any] | None:
        resp = self._post(f"/internal/batch-runs/{run_id}/claim", {})
        if resp.status_code in (404, 409):
            log.info("batch run %s is not runnable: %s", run_id, resp.text[:300])
            return None
        resp.raise_for_status()
        return dict(resp.json())

    def progress(self, run_id: int, body: dict[str, Any]) -> str:
        resp = self._post(f"/internal/batch-runs/{run_id}/progress", body)
        if resp.status_code == 404:
            return "stop"  # the run was deleted
        resp.raise_for_status()
        return str(resp.json()["control"])

    def finish(self, run_id: int, body: dict[str, Any]) -> None:
        resp = self._post(f"/internal/batch-runs/{run_id}/finish", body)
        if resp.status_code not in (404, 409):
            resp.raise_for_status()

    def fire(self, job_id: int, fire_at: float) -> dict[str, Any]:
        resp = self._post(f"/internal/batch-jobs/{job_id}/fire", {"fire_at": fire_at})
        resp.raise_for_status()
        return dict(resp.json())

    def register_dataset(self, name: str, path: Path, description: str) -> bool:
        """Upload a file as a new dataset (source `job`); False when the name is already taken."""
        with path.open("rb") as fh:
            resp = self.http.put(f"/internal/datasets/{name}/content", params={"source": "job",
                                 "description": description}, content=fh,
                                 timeout=max(600.0, self.http.timeout.read or 0))  # fmt: skip
        if resp.status_code == 409:
            return False
        resp.raise_for_status()
        return True


class _RunLease:
    """Owns the run (a `Lease` on `RUN_OWNER`) and keeps it and the run's entry in `RUN_LEASES` fresh while this
    worker runs it; the entry is dropped only once the run was reported (a worker that dies leaves it to expire,
    and `jobs.run_recovery` queues the run again)."""

    def __init__(self, client: redis.Redis, run_id: int, seconds: int) -> None:
        self.client, self.run_id, self.seconds = client, run_id, seconds
        self.owner = Lease(client, RUN_OWNER.format(run_id=run_id), seconds)
        self.released = False
        self._stop = threading.Event()

    def acquire(self, rq_job: str) -> bool:
        """False when another live worker runs this run (a duplicate RQ job of it)."""
        if not self.owner.acquire():
            return False
        self.client.zadd(RUN_LEASES, {str(self.run_id): now() + self.seconds})
        self.client.hset(run_info_key(self.run_id), "rq_job", rq_job)
        threading.Thread(target=self._run, name=f"run-lease-{self.run_id}", daemon=True).start()
        return True

    def _run(self) -> None:
        while not self._stop.wait(max(0.5, self.seconds / 3)):
            with contextlib.suppress(redis.RedisError):
                if not self.owner.extend():  # another worker owns the run now: its entry is not ours to renew
                    log.warning("batch run %s: this worker lost the run's lease", self.run_id)
                    return
                self.client.zadd(RUN_LEASES, {str(self.run_id): now() + self.seconds}, xx=True)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            owned = self.owner.release()  # token-checked: never frees another worker's lease
            if self.released and owned:
                self.client.zrem(RUN_LEASES, str(self.run_id))
                self.client.delete(run_info_key(self.run_id))


class _Reporter:
    """Buffers log lines and sends them with the next progress or finish report."""

    def __init__(self, registry: RegistryClient, run_id: int, rows_total: int | None) -> None:
        self.registry, self.run_id, self.rows_total = registry, run_id, rows_total
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        log.info("run %s: %s", self.run_id, line)
        self.lines.append(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + line)

    def take(self) -> list[str]:
        lines, self.lines = self.lines[-200:], []
        return lines

    def report(self, rows_done: int, checkpoint: dict[str, Any]) -> str:
        body = {"rows_done": rows_done, "rows_total": self.rows_total, "checkpoint": checkpoint, "log": self.take()}
        return self.registry.progress(self.run_id, body)

    def poll(self) -> str:
        """Ask whether a pause or stop was requested, sending only the log: the saved checkpoint stays as it is."""
        return self.registry.progress(self.run_id, {"log": self.take()})

    def finish(self, status: str, **fields: Any) -> None:
        self.registry.finish(self.run_id, {"status": status, "log": self.take(), **fields})


def execute_run(run_id: int) -> dict[str, Any]:
    """The RQ task: claim the run, do it from its checkpoint, report how it ended."""
    settings = Settings()
    current = get_current_job()
    client = current.connection if current is not None else sync_redis(settings)
    lease = _RunLease(client, run_id, settings.batch_run_lease_seconds)
    if not lease.acquire(current.id if current is not None else ""):
        log.warning("batch run %s is already running on another worker", run_id)
        return {"run": run_id, "status": "busy"}
    registry = RegistryClient(settings)
    try:
        spec = registry.claim(run_id)
        if spec is None or spec.get("cached"):
            lease.released = True
            return {"run": run_id, "status": "cached" if spec else "skipped"}
        reporter = _Reporter(registry, run_id, (spec.get("input") or {}).get("rows"))
        try:
            status = _execute(spec, run_id, settings, reporter)
        except Exception as exc:
            log.exception("batch run %s raised", run_id)
            # Not bad data (that ends in a ChunkFailed outcome): the registry queues it again while `retries` allow.
            reporter.finish("failed", error=f"{type(exc).__name__}: {exc}"[:4000], retryable=True)
            status = "failed"
        lease.released = True  # reported: nothing to recover
        return {"run": run_id, "status": status}
    finally:
        lease.close()
        registry.close()


def _execute(spec: dict[str, Any], run_id: int, settings: Settings, reporter: _Reporter) -> str:
    job = spec["job"]
    workdir = run_workdir(settings, run_id)
    reporter.log(f"attempt {spec['run']['attempt']} started")
    if job["kind"] == "script":
        from jobs.batch_script import run_script_job  # the script kind's runner may be absent

        return run_script_job(spec, run_id, settings, reporter)
    ctx = RunContext(settings=settings, workdir=workdir, report=reporter.report, log=reporter.log,
                     deadline=time.monotonic() + float(job["timeout_seconds"]))  # fmt: skip
    try:
        outcome = run_batch_predict(spec, ctx)
    except ChunkFailed as exc:
        outcome = Outcome("failed", int(spec["run"].get("rows_done", 0)), spec["run"]["checkpoint"], error=str(exc))
    fields: dict[str, Any] = {"rows_done": outcome.rows_done, "checkpoint": outcome.checkpoint,
                              "error": outcome.error}  # fmt: skip
    if outcome.status == "succeeded" and outcome.output is not None:
        name = str(outcome.checkpoint["result_name"])
        created = registry_register(reporter.registry, name, outcome.output, job["name"], spec["run"]["number"])
        if created or spec["run"]["checkpoint"].get("phase") == "registering":
            # Not created on a resumed registration: the attempt that died had registered it already.
            reporter.log(f"output registered as dataset {name}" + ("" if created else " (already there)"))
            fields["result_dataset"] = name
        else:
            outcome.status, fields["error"] = "failed", f"the output dataset name {name!r} was taken meanwhile"
    reporter.finish(outcome.status, **fields)
    if outcome.status in ("succeeded", "stopped"):
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome.status


def registry_register(registry: RegistryClient, name: str, path: Path, job: str, number: int) -> bool:
    return registry.register_dataset(name, path, f"Output of run {number} of batch job {job}")


def fire_schedule(job_id: int, fire_at: float) -> dict[str, Any]:
    """The RQ task a schedule slot becomes: the registry makes the run (once per slot) and the next fire."""
    registry = RegistryClient(Settings())
    try:
        return registry.fire(job_id, fire_at)
    finally:
        registry.close()


__all__ = ["RUN_LEASES", "RUN_TASK", "RegistryClient", "execute_run", "fire_schedule", "run_info_key"]
