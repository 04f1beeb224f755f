"""The RQ worker process: a non-forking worker, so loaded sessions and the JVM stay warm between jobs."""

from __future__ import annotations

import logging
import os

from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from jobs.async_predict import warm_up
from shared.heartbeat import Heartbeat
from shared.metrics import mark_process_up
from shared.redis import QUEUES, sync_redis
from shared.settings import Settings

log = logging.getLogger(__name__)


def build_worker(settings: Settings, name: str | None = None) -> SimpleWorker:
    """A `SimpleWorker` on every modelserve queue, JSON-serialised (pickle would let Redis writers run code)."""
    connection = sync_redis(settings)
    queues = [Queue(q, connection=connection, serializer=JSONSerializer) for q in QUEUES]
    return SimpleWorker(queues, name=name, connection=connection, serializer=JSONSerializer)


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
