"""The RQ worker process: a non-forking worker, so loaded sessions and the JVM stay warm between jobs.

Anyone who can write to Redis can enqueue a job, and RQ resolves a job's function from its dotted name, so
`os.system` queued with the right serializer would run as the worker's user. The worker therefore runs only
the platform's own task functions (`ALLOWED_TASKS`): a job naming anything else, or carrying an instance or a
callback outside the list, fails without its function (or callback) ever being imported.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from jobs.async_predict import warm_up
from shared.heartbeat import Heartbeat
from shared.metrics import mark_process_up
from shared.redis import QUEUES, sync_redis
from shared.settings import Settings

log = logging.getLogger(__name__)

ALLOWED_TASKS = frozenset(
    {
        "jobs.async_predict.run_batch",
        "jobs.callbacks.deliver_callback",
        "jobs.batch_runs.execute_run",
        "jobs.batch_runs.fire_schedule",
        "jobs.fetch.fetch_remote_dataset",
    }
)
"""Dotted names of every function a modelserve job may run; add a new task here when you add one."""


class ForbiddenTask(Exception):
    """A queued job names a function (or callback) that is not one of the platform's tasks."""


def _allowed(name: str | None, what: str, job_id: str) -> None:
    if name not in ALLOWED_TASKS:
        log.error("refused job %s: its %s %r is not a modelserve task", job_id, what, name)
        raise ForbiddenTask(f"job {job_id}: {what} {name!r} is not a modelserve task")


class AllowListedJob(Job):
    """A job whose function and callbacks resolve only to names in `ALLOWED_TASKS`."""

    @property
    def func(self) -> Any:
        _allowed(self.func_name, "function", self.id)
        if self.instance is not None:
            raise ForbiddenTask(f"job {self.id}: a method call on an instance is not a modelserve task")
        return super().func

    @property
    def success_callback(self) -> Any:
        if self._success_callback_name:
            _allowed(self._success_callback_name, "success callback", self.id)
        return super().success_callback

    @property
    def failure_callback(self) -> Any:
        if self._failure_callback_name:
            _allowed(self._failure_callback_name, "failure callback", self.id)
        return super().failure_callback

    @property
    def stopped_callback(self) -> Any:
        if self._stopped_callback_name:
            _allowed(self._stopped_callback_name, "stopped callback", self.id)
        return super().stopped_callback


def build_worker(settings: Settings, name: str | None = None) -> SimpleWorker:
    """A `SimpleWorker` on every modelserve queue, JSON-serialised (pickle would let Redis writers run code),
    running only allow-listed task functions."""
    connection = sync_redis(settings)
    queues = [Queue(q, connection=connection, serializer=JSONSerializer, job_class=AllowListedJob) for q in QUEUES]
    return SimpleWorker(queues, name=name, connection=connection, serializer=JSONSerializer, job_class=AllowListedJob)


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> None:
    worker = build_worker(settings, name)
    heartbeat = Heartbeat(worker.connection, "worker", worker.name or str(os.getpid())).start()
    mark_process_up("worker")
    warm_up()
    log.info("worker %s listening on %s", worker.name, ", ".join(QUEUES))
    try:
        worker.work(burst=burst, logging_level=settings.log_level, with_scheduler=False)
    finally:
        heartbeat.stop()
