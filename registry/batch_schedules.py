"""Runs and schedule fires on RQ: one pending scheduled RQ job per scheduled batch job, with a deterministic id.

The fire of slot T of job J is the RQ job `sched-J-<epoch of T>`, put in RQ's `ScheduledJobRegistry` with
`Queue.enqueue_at`. RQ's scheduler (one lock per queue) moves it to the queue when due, once, however long it was
overdue; enqueueing an id that already exists is skipped, so two registries never make two fires of one slot.
When it runs, the worker asks the registry to fire (`/internal/batch-jobs/{id}/fire`), which creates the run and
enqueues the next slot.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import redis
from croniter import croniter
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from registry.batch_tables import BatchJob
from shared.redis import BATCH_QUEUE, sync_redis
from shared.settings import Settings

log = logging.getLogger(__name__)
FIRE_TASK = "jobs.batch_runs.fire_schedule"
RUN_TASK = "jobs.batch_runs.execute_run"
_TIMEOUT_MARGIN = 120


def next_fire(cron: str, timezone: str, after: datetime) -> datetime:
    """The first slot of `cron` strictly after `after`, evaluated in `timezone` (DST included), in UTC."""
    start = after.astimezone(ZoneInfo(timezone))
    fire: datetime = croniter(cron, start).get_next(datetime)
    return fire.astimezone(UTC)


def fire_job_id(job_id: int, fire_at: datetime) -> str:
    return f"sched-{job_id}-{int(fire_at.timestamp())}"


class RunQueue:
    """The batch queue as the registry uses it (a short-lived connection per operation)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _queue(self, connection: redis.Redis) -> Queue:
        return Queue(BATCH_QUEUE, connection=connection, serializer=JSONSerializer)

    def enqueue_run(self, run_id: int, timeout_seconds: float, delay_seconds: float = 0) -> None:
        """Queue the run now, or after `delay_seconds` (RQ's scheduler moves it to the queue when due)."""
        connection = sync_redis(self.settings)
        options: dict[str, Any] = {
            "job_timeout": int(timeout_seconds) + _TIMEOUT_MARGIN,
            "result_ttl": self.settings.job_result_ttl_seconds,
            "failure_ttl": self.settings.job_result_ttl_seconds,
            "description": f"batch run {run_id}",
        }
        try:
            if delay_seconds > 0:
                self._queue(connection).enqueue_in(timedelta(seconds=delay_seconds), RUN_TASK, run_id, **options)
            else:
                self._queue(connection).enqueue(RUN_TASK, run_id, **options)
        finally:
            connection.close()

    def schedule(self, job: BatchJob, after: datetime | None = None) -> datetime | None:
        """Make sure the job's next fire is pending (and no other); returns its time (None when not scheduled)."""
        connection = sync_redis(self.settings)
        try:
            if job.dispatch != "schedule" or job.schedule_paused or not job.cron or job.id is None:
                self._cancel(connection, job.id)
                return None
            fire = job.next_run_at
            if fire is None or after is not None:
                fire = next_fire(job.cron, job.timezone or "UTC", after or datetime.now(UTC))
            fire = fire.replace(tzinfo=UTC) if fire.tzinfo is None else fire
            wanted = fire_job_id(job.id, fire)
            self._cancel(connection, job.id, keep=wanted)
            if not self._pending(connection, wanted):
                self._queue(connection).enqueue_at(
                    fire, FIRE_TASK, job.id, fire.timestamp(), job_id=wanted, retry=Retry(max=3, interval=[5, 15, 60]),
                    result_ttl=self.settings.job_result_ttl_seconds,
                    failure_ttl=self.settings.job_result_ttl_seconds,
                    description=f"schedule fire of batch job {job.name}",
                )  # fmt: skip
            return fire
        finally:
            connection.close()

    def _pending(self, connection: redis.Redis, job_id: str) -> bool:
        # An existing id is a no-op (no second fire of a slot); one that ended unprocessed is made again.
        try:
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        except NoSuchJobError:
            return False
        if job.get_status(refresh=False) in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            job.delete()
            return False
        return True

    def cancel(self, job_id: int | None) -> None:
        connection = sync_redis(self.settings)
        try:
            self._cancel(connection, job_id)
        finally:
            connection.close()

    def _cancel(self, connection: redis.Redis, job_id: int | None, keep: str | None = None) -> None:
        if job_id is None:
            return
        prefix = f"sched-{job_id}-"
        registry = ScheduledJobRegistry(queue=self._queue(connection))
        for pending in registry.get_job_ids():
            if pending.startswith(prefix) and pending != keep:
                registry.remove(pending)
                with contextlib.suppress(NoSuchJobError):
                    Job.fetch(pending, connection=connection, serializer=JSONSerializer).delete()


def pending_fires(settings: Settings, job_id: int) -> list[str]:
    """Ids of the scheduled fires of a job in RQ (tests and diagnostics)."""
    connection = sync_redis(settings)
    try:
        registry = ScheduledJobRegistry(BATCH_QUEUE, connection=connection, serializer=JSONSerializer)
        return [i for i in registry.get_job_ids() if i.startswith(f"sched-{job_id}-")]
    finally:
        connection.close()
