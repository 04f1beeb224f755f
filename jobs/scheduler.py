"""The scheduler process: RQ's scheduler moves delayed and retried jobs onto their queues when due."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from types import FrameType

import redis
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from jobs.janitor import sweep
from jobs.run_recovery import recover_runs
from shared.heartbeat import Heartbeat
from shared.metrics import mark_process_up
from shared.redis import QUEUES, sync_redis
from shared.settings import Settings

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0


def run_scheduler(settings: Settings) -> None:
    connection = sync_redis(settings)
    scheduler = RQScheduler(list(QUEUES), connection=connection, serializer=JSONSerializer)
    heartbeat = Heartbeat(connection, "scheduler", f"{os.uname().nodename}-{os.getpid()}").start()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    mark_process_up("scheduler")
    log.info("scheduler running for %s", ", ".join(QUEUES))
    backoff = 0.0
    try:
        while not stop.is_set():
            try:
                _tick(scheduler, connection, settings)
            except redis.RedisError as exc:
                # Redis restarting or unreachable: keep the process (the janitor) alive and try again, backing off
                # up to `scheduler_redis_backoff_seconds`; redis-py reconnects on the next command.
                backoff = min(max(2 * backoff, TICK_SECONDS), settings.scheduler_redis_backoff_seconds)
                log.warning("scheduler: Redis unavailable (%s); retrying in %.0f s", exc, backoff)
                stop.wait(backoff)
                continue
            if backoff:
                log.info("scheduler: Redis is back")
                backoff = 0.0
            stop.wait(TICK_SECONDS)
    finally:
        with contextlib.suppress(redis.RedisError):
            scheduler.release_locks()
        heartbeat.stop()


def _tick(scheduler: RQScheduler, connection: redis.Redis, settings: Settings) -> None:
    # Only one scheduler holds each queue's lock at a time, so two processes never double-enqueue.
    if scheduler.acquire_locks():
        scheduler.enqueue_scheduled_jobs()
    try:
        sweep(connection, settings)
    except redis.RedisError:
        raise
    except Exception:
        log.exception("async janitor sweep failed")
    recover_runs(connection, settings)  # batch runs whose worker died resume elsewhere
    connection.ping()  # a sweep that logged its Redis error still makes the tick count as failed
