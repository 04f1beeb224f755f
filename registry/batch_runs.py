"""Runs of batch jobs: start, stop, pause, continue, delete; and what workers report (claim, progress, finish).

The run row is the truth: a worker claims a queued (or crashed, still `running`) run, reports rows done and its
checkpoint after every chunk and learns from the answer whether a pause or stop was asked; a claimed run that
was resumed after a crash starts from the checkpoint held here.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from registry.batch_jobs import script_jobs_check
from registry.batch_schedules import RunQueue, next_fire
from registry.batch_tables import ACTIVE, FINISHED, LOG_TAIL_LINES, BatchJob, CachedFrom, Run, RunPublic
from registry.catalog import ModelCatalog
from registry.schemas import Page
from registry.tables import Dataset, ModelAlias, ModelVersion, RegisteredModel, Service, utcnow
from shared.artifacts import ArtifactStore
from shared.errors import Conflict, ModelServeError, NotFound, ServiceUnavailable
from shared.settings import Settings

log = logging.getLogger(__name__)


class RunProgress(BaseModel):
    """A worker's report; a report without `rows_done` or `checkpoint` leaves them as they are (a control poll)."""

    rows_done: int | None = Field(default=None, ge=0)
    rows_total: int | None = Field(default=None, ge=0)
    checkpoint: dict[str, Any] | None = None
    log: list[str] = Field(default_factory=list, max_length=1000)


class RunFinish(BaseModel):
    status: Literal["paused", "succeeded", "failed", "stopped"]
    rows_done: int | None = Field(default=None, ge=0)
    rows_total: int | None = Field(default=None, ge=0)
    checkpoint: dict[str, Any] | None = None
    result_dataset: str | None = None
    error: str | None = Field(default=None, max_length=20_000)
    log: list[str] = Field(default_factory=list, max_length=1000)
    retryable: bool = False
    """A `failed` run whose failure may pass (not bad data): queued again while the job's `retries` allow."""


def run_workdir(settings: Settings, run_id: int) -> Path:
    """Where a worker keeps a run's part files (shared data dir)."""
    return settings.data_dir / "batch-runs" / str(run_id)


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class RunManager:
    """Runs in one database session; `queue` puts them (and schedule fires) on RQ."""

    def __init__(self, session: Session, settings: Settings, model_store: ArtifactStore) -> None:
        self.session = session
        self.settings = settings
        self.model_store = model_store
        self.queue = RunQueue(settings)

    # --- reading -----------------------------------------------------------------------------------------

    def get(self, job: BatchJob, number: int) -> Run:
        row = self.session.exec(select(Run).where(Run.job_id == job.id, Run.number == number)).first()
        if row is None:
            raise NotFound(f"Batch job '{job.name}' has no run {number}")
        return row

    def by_id(self, run_id: int) -> tuple[Run, BatchJob]:
        row = self.session.get(Run, run_id)
        job = self.session.get(BatchJob, row.job_id) if row is not None else None
        if row is None or job is None:
            raise NotFound(f"Run {run_id} does not exist")
        return row, job

    def last(self, job: BatchJob) -> Run | None:
        query = select(Run).where(Run.job_id == job.id).order_by(col(Run.number).desc())
        return self.session.exec(query).first()

    def list(self, job: BatchJob, limit: int, offset: int, status: str | None = None) -> Page[RunPublic]:
        query = select(Run).where(Run.job_id == job.id)
        count = select(func.count()).select_from(Run).where(Run.job_id == job.id)
        if status:
            query, count = query.where(Run.status == status), count.where(Run.status == status)
        rows = self.session.exec(query.order_by(col(Run.number).desc()).offset(offset).limit(limit)).all()
        items = [self.public(r, job) for r in rows]
        return Page(items=items, total=self.session.exec(count).one(), limit=limit, offset=offset)

    def public(self, row: Run, job: BatchJob) -> RunPublic:
        started, finished = _aware(row.started_at), _aware(row.finished_at)
        duration = None
        if started is not None:
            duration = round(((finished or datetime.now(UTC)) - started).total_seconds(), 3)
        cached = None
        if row.cached_from is not None:
            source = self.session.get(Run, row.cached_from)
            source_job = self.session.get(BatchJob, source.job_id) if source else None
            if source is not None and source_job is not None:
                cached = CachedFrom(job=source_job.name, run=source.number)
        progress = round(row.rows_done / row.rows_total, 4) if row.rows_total else None
        return RunPublic(
            id=row.id or 0, number=row.number, name=f"{job.name}#{row.number}", job=job.name,
            status=row.status, trigger=row.trigger, requested=row.requested,  # type: ignore[arg-type]
            created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
            duration_seconds=duration, attempt=row.attempt, rows_done=row.rows_done, rows_total=row.rows_total,
            progress=progress, log_tail=row.log_tail, result_dataset=row.result_dataset, cached_from=cached,
            error=row.error,
        )  # fmt: skip

    # --- user operations ---------------------------------------------------------------------------------

    def start(self, job: BatchJob, trigger: str = "manual") -> Run:
        if job.kind == "script":
            script_jobs_check(self.settings)
        # The job row's counter, bumped in the run's own transaction (the UPDATE locks the row until the commit),
        # so two starts at once get two numbers and a deleted run's number is never given again.
        self.session.execute(
            update(BatchJob).where(col(BatchJob.id) == job.id)
            .values(last_run_number=col(BatchJob.last_run_number) + 1)
            .execution_options(synchronize_session=False)
        )  # fmt: skip
        number = self.session.execute(select(BatchJob.last_run_number).where(BatchJob.id == job.id)).scalar_one()
        row = Run(job_id=job.id or 0, number=number, trigger=trigger)
        self.session.add(row)
        self.session.commit()
        self.session.refresh(row)
        self._enqueue(row, job)
        return row

    def _enqueue(self, row: Run, job: BatchJob) -> None:
        try:
            self.queue.enqueue_run(row.id or 0, job.timeout_seconds)
        except Exception as exc:
            self._end(row, "failed", error=f"could not queue the run: {exc}")
            raise ServiceUnavailable(f"The job queue is unavailable: {exc}") from exc
        log.info("batch run queued", extra={"job": job.name, "run": row.number, "trigger": row.trigger})

    def stop(self, row: Run) -> Run:
        if row.status in FINISHED:
            raise Conflict(f"Run {row.number} has already ended ({row.status})", run_status=row.status)
        if row.status == "running":
            return self._save(row, requested="stop")
        return self._end(row, "stopped")

    def pause(self, row: Run) -> Run:
        if row.status in FINISHED:
            raise Conflict(f"Run {row.number} has already ended ({row.status})", run_status=row.status)
        if row.status == "running":
            return self._save(row, requested="pause")
        return self._save(row, status="paused", requested=None)

    def resume(self, row: Run, job: BatchJob) -> Run:
        if row.status == "running" and row.requested == "pause":
            return self._save(row, requested=None)
        if row.status != "paused":
            raise Conflict(f"Run {row.number} is not paused ({row.status})", run_status=row.status)
        self._save(row, status="queued", requested=None, finished_at=None)
        self._enqueue(row, job)
        return row

    def delete(self, row: Run) -> None:
        if row.status in ACTIVE:
            raise Conflict(f"Run {row.number} is {row.status}: stop it first", run_status=row.status)
        run_id = row.id or 0
        self.session.delete(row)
        self.session.commit()
        shutil.rmtree(run_workdir(self.settings, run_id), ignore_errors=True)

    def _save(self, row: Run, **changes: Any) -> Run:
        for key, value in changes.items():
            setattr(row, key, value)
        self.session.add(row)
        self.session.commit()
        self.session.refresh(row)
        return row

    def _end(self, row: Run, status: str, **changes: Any) -> Run:
        return self._save(row, status=status, requested=None, finished_at=utcnow(), **changes)

    # --- worker reports ----------------------------------------------------------------------------------

    def claim(self, run_id: int) -> dict[str, Any]:
        """A worker starts (or resumes) the run: what to do and where to start from; 409 when not runnable."""
        row, job = self.by_id(run_id)
        if row.status not in ACTIVE:
            raise Conflict(f"Run {row.number} of '{job.name}' is {row.status}", run_status=row.status)
        if row.requested in ("stop", "pause"):
            if row.requested == "stop":
                self._end(row, "stopped")
            else:
                self._save(row, status="paused", requested=None)
            raise Conflict(f"Run {row.number} of '{job.name}' is {row.status}", run_status=row.status)
        checkpoint = dict(row.checkpoint or {})
        params = checkpoint.setdefault("params", job.params)  # a resumed run keeps the params it started with
        spec: dict[str, Any] = {"job": {
            "name": job.name, "kind": job.kind, "params": params, "retries": job.retries,
            "retry_delay_seconds": job.retry_delay_seconds, "timeout_seconds": job.timeout_seconds,
        }}  # fmt: skip
        try:
            if job.kind == "batch_predict":
                spec.update(self._predict_inputs(params))
            else:
                spec["inputs"] = [self._dataset_info(n) for n in params.get("input_datasets", [])]
        except ModelServeError as err:  # the model, service or dataset went away: the run cannot be done
            self._end(row, "failed", attempt=row.attempt + 1, error=err.detail)
            raise Conflict(f"Run {row.number} of '{job.name}' failed: {err.detail}", run_status="failed") from err
        if job.kind == "batch_predict":
            row.cache_key = self._cache_key(spec)
            if params.get("reuse_cached_result") and not row.checkpoint:
                source = self._cached(row)
                if source is not None:
                    self._end(row, "succeeded", started_at=row.started_at or utcnow(), rows_done=source.rows_done,
                              rows_total=source.rows_total, result_dataset=source.result_dataset,
                              cached_from=source.id, attempt=row.attempt + 1,
                              log_tail=[f"reused the output of run {source.id} ({source.result_dataset})"])  # fmt: skip
                    return {**spec, "cached": True, "run": self._run_info(row)}
            checkpoint.setdefault("result_name", self._result_name(params, row))
        self._save(row, status="running", attempt=row.attempt + 1, started_at=row.started_at or utcnow(),
                   checkpoint=checkpoint, error=None)  # fmt: skip
        return {**spec, "cached": False, "run": self._run_info(row)}

    def progress(self, run_id: int, body: RunProgress) -> str:
        """Record progress; the answer tells the worker to `continue`, `pause` or `stop`."""
        row, _job = self.by_id(run_id)
        if row.status != "running":
            return "stop"
        changes: dict[str, Any] = {"log_tail": _tail(row.log_tail, body.log)}
        if body.rows_done is not None:
            changes["rows_done"] = body.rows_done
        if body.rows_total is not None:
            changes["rows_total"] = body.rows_total
        if body.checkpoint is not None:
            changes["checkpoint"] = body.checkpoint
        self._save(row, **changes)
        return row.requested or "continue"

    def finish(self, run_id: int, body: RunFinish) -> Run:
        row, job = self.by_id(run_id)
        if row.status in FINISHED:
            raise Conflict(f"Run {row.number} of '{job.name}' has already ended ({row.status})")
        changes: dict[str, Any] = {"log_tail": _tail(row.log_tail, body.log), "error": body.error}
        for name in ("rows_done", "rows_total", "checkpoint", "result_dataset"):
            if getattr(body, name) is not None:
                changes[name] = getattr(body, name)
        if body.status == "paused":
            return self._save(row, status="paused", requested=None, **changes)
        if body.status == "failed" and body.retryable and row.requested is None and row.attempt <= job.retries:
            return self._retry(row, job, changes)
        log.info("batch run ended", extra={"job": job.name, "run": row.number, "status": body.status})
        return self._end(row, body.status, **changes)

    def _retry(self, row: Run, job: BatchJob, changes: dict[str, Any]) -> Run:
        """Queue the run again for its next attempt (it resumes from its checkpoint); `attempt` counts them."""
        delay = job.retry_delay_seconds
        line = (f"attempt {row.attempt} of {job.retries + 1} failed: {changes.get('error') or 'no reason'}; "
                f"retrying in {delay:g} s")  # fmt: skip
        changes["log_tail"] = _tail(changes["log_tail"], [line])
        self._save(row, status="queued", requested=None, **changes)
        log.warning("batch run retried", extra={"job": job.name, "run": row.number, "attempt": row.attempt})
        try:
            self.queue.enqueue_run(row.id or 0, job.timeout_seconds, delay_seconds=delay)
        except Exception as exc:
            return self._end(row, "failed", error=f"{row.error}; could not queue its retry: {exc}")
        return row

    def fire(self, job_id: int, fire_at: float) -> Run | None:
        """A schedule slot is due: one run per slot however many times it is fired, then the next slot."""
        job = self.session.get(BatchJob, job_id)
        if job is None or job.dispatch != "schedule" or job.schedule_paused or not job.cron:
            return None
        slot = datetime.fromtimestamp(fire_at, UTC)
        won = self.session.execute(
            update(BatchJob)
            .where(col(BatchJob.id) == job_id)
            .where((col(BatchJob.last_fire_at).is_(None)) | (col(BatchJob.last_fire_at) < slot))
            .values(last_fire_at=slot)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        self.session.commit()
        self.session.refresh(job)
        # The next slot after now first (slots missed while nothing was running are not made up one by one), so
        # whoever sees this slot's run also sees the job's next fire.
        job.next_run_at = next_fire(job.cron, job.timezone or "UTC", max(datetime.now(UTC), slot))
        job.next_run_at = self.queue.schedule(job)
        self.session.add(job)
        self.session.commit()
        run = None
        if won:
            try:
                run = self.start(job, trigger="schedule")
            except ModelServeError as err:  # e.g. script jobs turned off: this slot is lost, the next still comes
                log.warning("scheduled run of %s not started: %s", job.name, err.detail)
        return run

    # --- helpers -----------------------------------------------------------------------------------------

    def _predict_inputs(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("service"):
            service = self.session.exec(select(Service).where(Service.name == params["service"])).first()
            if service is None:
                raise Conflict(f"Service '{params['service']}' no longer exists")
            version_id = service.version_id
            if version_id is None:
                alias = self.session.get(ModelAlias, (service.model_id, service.alias))
                version_id = alias.version_id if alias else None
            version = self.session.get(ModelVersion, version_id) if version_id else None
            model = self.session.get(RegisteredModel, service.model_id)
            if version is None or model is None:
                raise Conflict(f"Service '{params['service']}' points at no model version")
        else:
            model, version = ModelCatalog(self.session, self.model_store).resolve(
                params["model"], params.get("version", "latest")
            )
        description = ModelCatalog(self.session, self.model_store).description_of(version)
        return {
            "model": {"name": model.name, "version": version.version, "sha256": version.sha256,
                      "description": description.model_dump(mode="json")},
            "input": self._dataset_info(params["input_dataset"]),
        }  # fmt: skip

    def _dataset_info(self, name: str) -> dict[str, Any]:
        row = self.session.exec(select(Dataset).where(Dataset.name == name)).first()
        if row is None or row.status != "ready" or row.sha256 is None:
            raise Conflict(f"Dataset '{name}' is missing or not ready")
        return {"name": row.name, "sha256": row.sha256, "format": row.format, "rows": row.rows,
                "columns": row.columns}  # fmt: skip

    @staticmethod
    def _cache_key(spec: dict[str, Any]) -> str:
        params = spec["job"]["params"]
        engine = spec["model"]["description"]["engine"]
        key = [spec["model"]["sha256"], engine.get("implementation"), spec["model"]["description"]["function_type"],
               spec["input"]["sha256"], params.get("input_mapping"), params.get("output_format", "csv")]  # fmt: skip
        return hashlib.sha256(orjson.dumps(key, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def _cached(self, row: Run) -> Run | None:
        candidates = self.session.exec(
            select(Run).where(Run.cache_key == row.cache_key, Run.status == "succeeded", Run.id != row.id,
                              col(Run.result_dataset).is_not(None)).order_by(col(Run.finished_at).desc())
        ).all()  # fmt: skip
        for candidate in candidates:
            if self.session.exec(select(Dataset.id).where(Dataset.name == candidate.result_dataset)).first():
                return candidate
        return None

    def _result_name(self, params: dict[str, Any], row: Run) -> str:
        wanted = str(params["output_dataset"])
        taken = self.session.exec(select(Dataset.id).where(Dataset.name == wanted)).first() is not None
        return f"{wanted[:110]}-run-{row.number}" if taken else wanted

    @staticmethod
    def _run_info(row: Run) -> dict[str, Any]:
        return {"id": row.id, "number": row.number, "attempt": row.attempt, "status": row.status,
                "checkpoint": row.checkpoint or {}, "rows_done": row.rows_done}  # fmt: skip


def _tail(current: list[str], new: list[str]) -> list[str]:
    lines = [*current, *(line[:2000] for line in new)]
    return lines[-LOG_TAIL_LINES:]
