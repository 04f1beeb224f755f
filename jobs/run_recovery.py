"""Resumes batch runs whose worker died: their lease in Redis ran out without the run being reported.

Called from the scheduler's loop every tick, under a Redis lock so two schedulers never sweep at once. The run is
queued again (a fresh RQ job); the worker that picks it up claims it and resumes from the registry's checkpoint.
"""

from __future__ import annotations

import contextlib
import logging

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from jobs.batch_runs import RUN_LEASES, RUN_TASK, RegistryClient, run_info_key
from shared.jobstore import now
from shared.leases import Lease
from shared.redis import BATCH_QUEUE
from shared.settings import Settings

log = logging.getLogger(__name__)
LOCK = "modelserve:batch:recovery-lock"
LOCK_SECONDS = 10
_WAITING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _status(client: redis.Redis, job_id: str) -> JobStatus | None:
    if not job_id:
        return None
    try:
        return Job.fetch(job_id, connection=client, serializer=JSONSerializer).get_status(refresh=False)
    except NoSuchJobError:
        return None


def recover_runs(client: redis.Redis, settings: Settings) -> int:
    """Queue again every run whose lease expired; fail it past `batch_run_max_recoveries`. Returns runs queued.

    Never raises (it runs in the scheduler's loop): a failed sweep is logged and tried again next tick.
    """
    lease = Lease(client, LOCK, LOCK_SECONDS)
    try:
        if not lease.acquire():
            return 0
    except redis.RedisError:
        log.exception("batch run recovery: Redis unavailable")
        return 0
    try:
        return _recover(client, settings)
    except Exception:
        log.exception("batch run recovery failed")
        return 0
    finally:
        with contextlib.suppress(redis.RedisError):
            lease.release()  # only ours, never another scheduler's


def _recover(client: redis.Redis, settings: Settings) -> int:
    queued = 0
    queue = Queue(BATCH_QUEUE, connection=client, serializer=JSONSerializer)
    for raw in client.zrangebyscore(RUN_LEASES, 0, now(), start=0, num=100):
        run_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        info = {_text(k): _text(v) for k, v in client.hgetall(run_info_key(run_id)).items()}
        lease_until = now() + settings.batch_run_lease_seconds
        if _status(client, info.get("rq_job", "")) in _WAITING:
            client.zadd(RUN_LEASES, {run_id: lease_until})  # queued again, waiting for a worker
            continue
        recoveries = int(info.get("recoveries") or 0) + 1
        if recoveries > settings.batch_run_max_recoveries:
            _give_up(settings, int(run_id), recoveries - 1)
            client.zrem(RUN_LEASES, run_id)
            client.delete(run_info_key(run_id))
            continue
        job = queue.enqueue(RUN_TASK, int(run_id), job_timeout=-1, description=f"batch run {run_id} (resumed)",
                            result_ttl=settings.job_result_ttl_seconds)  # fmt: skip
        client.hset(run_info_key(run_id), mapping={"rq_job": job.id, "recoveries": recoveries})
        client.zadd(RUN_LEASES, {run_id: lease_until})
        log.warning("batch run %s lost its worker: queued again (recovery %d)", run_id, recoveries)
        queued += 1
    return queued


def _give_up(settings: Settings, run_id: int, recoveries: int) -> None:
    registry = RegistryClient(settings)
    try:
        with contextlib.suppress(Exception):
            registry.finish(run_id, {"status": "failed",
                                     "error": f"the run lost its worker {recoveries} times; giving up"})  # fmt: skip
    finally:
        registry.close()
