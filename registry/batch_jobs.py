"""Batch job definitions: per-kind parameter checks, create/update/delete, and which datasets jobs use.

No HTTP in here; schedules are kept in Redis by `registry.batch_schedules`, runs by `registry.batch_runs`.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import delete, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from registry.batch_tables import (
    ACTIVE,
    BatchJob,
    BatchJobCreate,
    BatchJobPatch,
    BatchJobPublic,
    Run,
    ScheduleSpec,
)
from registry.catalog import check_name
from registry.schemas import Page
from registry.tables import Dataset, Service, utcnow
from shared.errors import Conflict, Forbidden, ModelServeError, NotFound, ValidationFailed, field_error
from shared.settings import Settings

log = logging.getLogger(__name__)
SCRIPT_RUNNER = "jobs.script_runner"


class NotAvailable(ModelServeError):
    status, title, slug = 501, "Not implemented", "not-implemented"


class BatchPredictParams(BaseModel):
    """Score a dataset with a service's model version, or a model + version."""

    model_config = {"extra": "forbid"}

    service: str | None = None
    model: str | None = None
    version: str | int | None = None
    input_dataset: str
    output_dataset: str
    output_format: Literal["csv", "jsonl", "parquet"] = "csv"
    chunk_size: int = Field(default=10_000, ge=1, le=1_000_000)
    input_mapping: dict[str, str | list[str]] | None = None
    reuse_cached_result: bool = False


class ScriptParams(BaseModel):
    """Run a script in a subprocess; files it writes to `output/` become datasets."""

    model_config = {"extra": "forbid"}

    code: str = Field(min_length=1, max_length=1_000_000)
    interpreter: str = Field(default="python3", max_length=64)
    args: list[str] = Field(default_factory=list, max_length=100)
    env: dict[str, str] = Field(default_factory=dict)
    input_datasets: list[str] = Field(default_factory=list, max_length=50)
    memory_limit_mb: int = Field(default=1024, ge=16, le=65_536)


def _fail(field: str, message: str, **kw: Any) -> ValidationFailed:
    return ValidationFailed(f"Invalid {field}", errors=[field_error(field, message, **kw)])


def check_schedule(schedule: ScheduleSpec | None, dispatch: str) -> None:
    if dispatch != "schedule":
        return
    if schedule is None:
        raise _fail("schedule", "required when dispatch is 'schedule'", expected={"cron": "...", "timezone": "..."})
    try:
        ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail("schedule.timezone", "unknown IANA time zone", expected="e.g. Europe/Paris",
                    received=schedule.timezone) from None  # fmt: skip
    if not croniter.is_valid(schedule.cron):
        raise _fail("schedule.cron", "not a valid cron expression", expected="e.g. '*/5 * * * *'",
                    received=schedule.cron)  # fmt: skip


def script_jobs_check(settings: Settings) -> None:
    """Script jobs need the setting and the runner module (written separately)."""
    if not getattr(settings, "script_jobs_enabled", False):
        raise Forbidden("Script jobs are disabled (set MODELSERVE_SCRIPT_JOBS_ENABLED=true to allow them)")
    if importlib.util.find_spec(SCRIPT_RUNNER) is None:
        raise NotAvailable("Script jobs are not available yet on this platform")


class BatchJobs:
    """Job definitions in one database session."""

    def __init__(self, session: Session, settings: Settings) -> None:
        self.session = session
        self.settings = settings

    # --- reading -----------------------------------------------------------------------------------------

    def get(self, name: str) -> BatchJob:
        row = self.session.exec(select(BatchJob).where(BatchJob.name == name)).first()
        if row is None:
            raise NotFound(f"Batch job '{name}' does not exist")
        return row

    def rows(self, limit: int, offset: int) -> tuple[list[BatchJob], int]:
        total = self.session.exec(select(func.count()).select_from(BatchJob)).one()
        rows = self.session.exec(select(BatchJob).order_by(col(BatchJob.name)).offset(offset).limit(limit)).all()
        return list(rows), total

    def public(self, row: BatchJob, last_run: Any = None) -> BatchJobPublic:
        schedule = ScheduleSpec(cron=row.cron, timezone=row.timezone or "UTC") if row.cron else None
        return BatchJobPublic(
            name=row.name, description=row.description, kind=row.kind, dispatch=row.dispatch,  # type: ignore[arg-type]
            schedule=schedule, schedule_paused=row.schedule_paused, next_run_at=row.next_run_at,
            retries=row.retries, retry_delay_seconds=row.retry_delay_seconds, timeout_seconds=row.timeout_seconds,
            params=row.params, last_run=last_run, created_at=row.created_at, updated_at=row.updated_at,
        )  # fmt: skip

    def page(self, items: list[BatchJobPublic], total: int, limit: int, offset: int) -> Page[BatchJobPublic]:
        return Page(items=items, total=total, limit=limit, offset=offset)

    # --- checks ------------------------------------------------------------------------------------------

    def check_params(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        """The params of `kind`, checked (422 naming `params.<field>`) and with defaults filled in."""
        model: type[BaseModel] = BatchPredictParams if kind == "batch_predict" else ScriptParams
        if kind == "script":
            script_jobs_check(self.settings)
        try:
            parsed = model.model_validate(params)
        except ValidationError as exc:
            errors = [field_error(".".join(["params", *(str(p) for p in e["loc"])]), e["msg"]) for e in exc.errors()]
            raise ValidationFailed("Invalid params: " + ", ".join(e["field"] for e in errors), errors=errors) from None
        if isinstance(parsed, BatchPredictParams):
            self._check_batch_predict(parsed)
        elif isinstance(parsed, ScriptParams):
            allowed = sorted(self.settings.script_interpreters or {"python3": ""})
            if parsed.interpreter not in allowed:
                raise _fail("params.interpreter", "not a configured interpreter", expected=allowed,
                            received=parsed.interpreter)  # fmt: skip
            for i, name in enumerate(parsed.input_datasets):
                self._dataset(name, f"params.input_datasets[{i}]")
        return parsed.model_dump(exclude_none=True)

    def _check_batch_predict(self, p: BatchPredictParams) -> None:
        if (p.service is None) == (p.model is None):
            raise _fail("params.service", "give either `service` or `model` (+ `version`), not both or neither")
        if p.service is not None:
            if p.version is not None:
                raise _fail("params.version", "a service pins its version: give `version` with `model` only")
            if self.session.exec(select(Service.id).where(Service.name == p.service)).first() is None:
                raise _fail("params.service", f"no service named '{p.service}'", received=p.service)
        check_name(p.output_dataset, "params.output_dataset")
        dataset = self._dataset(p.input_dataset, "params.input_dataset")
        if p.input_mapping:
            columns = {c["name"] for c in dataset.columns}
            for target, source in p.input_mapping.items():
                for column in [source] if isinstance(source, str) else source:
                    if column not in columns:
                        raise _fail(f"params.input_mapping.{target}", f"no column '{column}' in the input dataset",
                                    expected=sorted(columns), received=column)  # fmt: skip

    def _dataset(self, name: str, field: str) -> Dataset:
        row = self.session.exec(select(Dataset).where(Dataset.name == name)).first()
        if row is None:
            raise _fail(field, f"no dataset named '{name}'", received=name)
        return row

    # --- writing -----------------------------------------------------------------------------------------

    def create(self, body: BatchJobCreate) -> BatchJob:
        check_name(body.name)
        check_schedule(body.schedule, body.dispatch)
        params = self.check_params(body.kind, body.params)
        row = BatchJob(
            name=body.name, description=body.description, kind=body.kind, dispatch=body.dispatch,
            cron=body.schedule.cron if body.schedule else None,
            timezone=body.schedule.timezone if body.schedule else None,
            retries=body.retries, retry_delay_seconds=body.retry_delay_seconds, timeout_seconds=body.timeout_seconds,
            params=params,
        )  # fmt: skip
        self.session.add(row)
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise Conflict(f"Batch job '{body.name}' already exists") from None
        self.session.refresh(row)
        return row

    def update(self, row: BatchJob, body: BatchJobPatch) -> BatchJob:
        fields = body.model_fields_set
        dispatch = body.dispatch or row.dispatch
        schedule = body.schedule if "schedule" in fields else (
            ScheduleSpec(cron=row.cron, timezone=row.timezone or "UTC") if row.cron else None
        )  # fmt: skip
        check_schedule(schedule, dispatch)
        if body.params is not None:
            row.params = self.check_params(row.kind, body.params)
        for name in ("description", "retries", "retry_delay_seconds", "timeout_seconds"):
            if getattr(body, name) is not None:
                setattr(row, name, getattr(body, name))
        row.dispatch = dispatch
        row.cron = schedule.cron if schedule else None
        row.timezone = schedule.timezone if schedule else None
        row.updated_at = utcnow()
        self.session.add(row)
        self.session.commit()
        self.session.refresh(row)
        return row

    def set_schedule_paused(self, row: BatchJob, paused: bool) -> BatchJob:
        if row.dispatch != "schedule":
            raise Conflict(f"Batch job '{row.name}' has no schedule (dispatch {row.dispatch})")
        row.schedule_paused, row.updated_at = paused, utcnow()
        self.session.add(row)
        self.session.commit()
        self.session.refresh(row)
        return row

    def delete(self, row: BatchJob) -> None:
        active = self.session.exec(
            select(Run.number).where(Run.job_id == row.id, col(Run.status).in_(ACTIVE))
        ).all()  # fmt: skip
        if active:
            raise Conflict(f"Batch job '{row.name}' has active runs: stop them first", runs=list(active))
        run_ids = self.session.exec(select(Run.id).where(Run.job_id == row.id)).all()
        self.session.execute(delete(Run).where(col(Run.job_id) == row.id))
        self.session.delete(row)
        self.session.commit()
        for run_id in run_ids:  # part files of paused or failed runs
            shutil.rmtree(self.settings.data_dir / "batch-runs" / str(run_id), ignore_errors=True)


def dataset_usage(session: Session, dataset: Dataset) -> list[str]:
    """Names of the jobs that read `dataset` (the dataset delete hook: a used dataset answers 409)."""
    users = []
    for name, params in session.exec(select(BatchJob.name, BatchJob.params)).all():
        used = [params.get("input_dataset"), *(params.get("input_datasets") or [])]
        if dataset.name in used:
            users.append(name)
    return sorted(users)
