"""Batch jobs and their runs: the tables and the bodies the API reads and answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from registry.tables import UtcDatetime, _ts, utcnow

JobKind = Literal["batch_predict", "script"]
Dispatch = Literal["on_demand", "schedule"]
RunStatus = Literal["queued", "running", "paused", "succeeded", "failed", "stopped"]
RunTrigger = Literal["manual", "schedule"]
ACTIVE: frozenset[str] = frozenset({"queued", "running"})
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "stopped"})
LOG_TAIL_LINES = 200


class BatchJob(SQLModel, table=True):
    """A job definition: what to run (`kind` + `params`), when (`dispatch`, `cron` in `timezone`) and how hard
    to try (`retries`, `retry_delay_seconds`, `timeout_seconds`)."""

    __tablename__ = "batch_jobs"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True, index=True)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    kind: str = Field(max_length=32)
    dispatch: str = Field(default="on_demand", max_length=16)
    cron: str | None = Field(default=None, max_length=128)
    timezone: str | None = Field(default=None, max_length=64)
    schedule_paused: bool = False
    last_run_number: int = 0
    """The highest run number ever given (deleted runs included): numbers are never given twice."""
    retries: int = 0
    retry_delay_seconds: float = 0.0
    timeout_seconds: float = 3600.0
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    next_run_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_fire_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    """The last schedule slot that made a run: a second fire of the same slot is a no-op."""
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class Run(SQLModel, table=True):
    """One execution of a job, numbered per job; the worker reports progress and its checkpoint here."""

    __tablename__ = "batch_runs"
    __table_args__ = (UniqueConstraint("job_id", "number", name="uq_batch_runs_job_number"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(sa_column=Column(ForeignKey("batch_jobs.id", ondelete="CASCADE"), nullable=False, index=True))
    number: int
    status: str = Field(default="queued", max_length=16)
    trigger: str = Field(default="manual", max_length=16)
    requested: str | None = Field(default=None, max_length=16)
    """`pause` or `stop` asked of a running run; the worker obeys at the next chunk boundary."""
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    started_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    finished_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    attempt: int = 0
    rows_done: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    rows_total: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    checkpoint: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    log_tail: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    result_dataset: str | None = Field(default=None, max_length=128)
    cache_key: str | None = Field(default=None, max_length=64, index=True)
    """Model version + input checksum + output shape: equal keys give equal outputs."""
    cached_from: int | None = None
    """Id of the succeeded run whose output this run reused."""
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class ScheduleSpec(BaseModel):
    cron: str = PydanticField(min_length=1, max_length=128, examples=["0 3 * * *"])
    timezone: str = PydanticField(default="UTC", max_length=64, examples=["Europe/Paris"])


class BatchJobCreate(BaseModel):
    """A job definition; `params` depend on `kind` (see the API description)."""

    model_config = {"extra": "forbid"}

    name: str
    description: str = PydanticField(default="", max_length=10_000)
    kind: JobKind
    dispatch: Dispatch = "on_demand"
    schedule: ScheduleSpec | None = None
    retries: int = PydanticField(default=0, ge=0, le=100)
    retry_delay_seconds: float = PydanticField(default=0.0, ge=0, le=3600)
    timeout_seconds: float = PydanticField(default=3600.0, gt=0, le=7 * 24 * 3600)
    params: dict[str, Any] = PydanticField(default_factory=dict)


class BatchJobPatch(BaseModel):
    model_config = {"extra": "forbid"}

    description: str | None = PydanticField(default=None, max_length=10_000)
    dispatch: Dispatch | None = None
    schedule: ScheduleSpec | None = None
    retries: int | None = PydanticField(default=None, ge=0, le=100)
    retry_delay_seconds: float | None = PydanticField(default=None, ge=0, le=3600)
    timeout_seconds: float | None = PydanticField(default=None, gt=0, le=7 * 24 * 3600)
    params: dict[str, Any] | None = None


class BatchJobPublic(BaseModel):
    name: str
    description: str
    kind: JobKind
    dispatch: Dispatch
    schedule: ScheduleSpec | None
    schedule_paused: bool
    next_run_at: UtcDatetime | None
    retries: int
    retry_delay_seconds: float
    timeout_seconds: float
    params: dict[str, Any]
    last_run: RunPublic | None = None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class CachedFrom(BaseModel):
    job: str
    run: int


class RunPublic(BaseModel):
    """A run as users see it: `number` is its id within the job (the `{run}` of its URL)."""

    id: int
    number: int
    name: str
    job: str
    status: RunStatus
    trigger: RunTrigger
    requested: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    duration_seconds: float | None
    attempt: int
    rows_done: int
    rows_total: int | None
    progress: float | None
    log_tail: list[str]
    result_dataset: str | None
    cached_from: CachedFrom | None
    error: str | None


BatchJobPublic.model_rebuild()
