"""Re-queues async work whose worker died, and queues submissions a dead gateway never batched.

Runs in the scheduler process every tick, under a Redis lock so two schedulers never sweep at once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC

import orjson
import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from shared.errors import ModelServeError
from shared.jobstore import (
    BATCHES,
    DONE_CHANNEL,
    FINISH_LUA,
    REQUEUE_LUA,
    START_LUA,
    UNBATCHED,
    batch_key,
    batch_owner_key,
    decode,
    enqueue_batch,
    job_key,
    now,
)
from shared.leases import Lease
from shared.redis import PREDICT_QUEUE
from shared.settings import Settings

log = logging.getLogger(__name__)
LOCK = "modelserve:async:janitor-lock"
LOCK_SECONDS = 10
UNBATCHED_GRACE_SECONDS = 5.0
MAX_ATTEMPTS = 3
LOOKAHEAD_SECONDS = 2.0
"""Waiting batches whose lease ends within this time get a fresh one now (the janitor ticks every second)."""
_WAITING = {"queued", "scheduled", "deferred", "created"}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _in_queue(client: redis.Redis, batch_id: str) -> bool:
    # "queued" but not in the list: a worker took it (RQ's intermediate queue) and lost it with its connection.
    return Queue(PREDICT_QUEUE, connection=client, serializer=JSONSerializer).get_job_position(batch_id) is not None


def sweep(client: redis.Redis, settings: Settings) -> dict[str, int]:
    lease = Lease(client, LOCK, LOCK_SECONDS)
    if not lease.acquire():
        return {}
    try:
        return {"batched": _batch_orphans(client, settings), "requeued": _requeue_expired(client, settings)}
    finally:
        lease.release()  # only ours: a sweep slower than the lock never frees another janitor's


def _batch_orphans(client: redis.Redis, settings: Settings) -> int:
    found = client.zrangebyscore(UNBATCHED, 0, now() - UNBATCHED_GRACE_SECONDS, start=0, num=5000)
    ids = [_text(i) for i in found]
    if not ids:
        return 0
    pipe = client.pipeline()
    for job_id in ids:
        pipe.hmget(job_key(job_id), "status", "service", "model", "version")
    groups: dict[tuple[str, str, int], list[str]] = defaultdict(list)
    for job_id, (status, service, model, version) in zip(ids, pipe.execute(), strict=True):
        if status == b"queued" and service and model:
            groups[(service.decode(), model.decode(), int(version or 0))].append(job_id)
    for (service, model, version), group in groups.items():
        enqueue_batch(client, service, model, version, group, settings.job_lease_seconds)
        log.warning("queued %d async jobs of %s that no gateway batched", len(group), service)
    client.zrem(UNBATCHED, *ids)
    return sum(len(g) for g in groups.values())


def _requeue_expired(client: redis.Redis, settings: Settings) -> int:
    """Re-queue batches whose lease ran out; never one that is only waiting or just being picked up.

    Waiting batches are looked at before their lease ends (so a worker picking one up never finds it expired),
    and the two short hand-overs inside RQ get a full lease of grace: a job moved to a worker's intermediate
    list but not yet marked started, and a job marked started whose `run_batch` has not renewed its lease yet.
    """
    requeued = 0
    lease = settings.job_lease_seconds
    current = now()
    due: list[tuple[bytes, float]] = client.zrangebyscore(  # type: ignore[assignment]
        BATCHES, 0, current + LOOKAHEAD_SECONDS, start=0, num=1000, withscores=True
    )
    for raw_id, score in due:
        batch_id = _text(raw_id)
        info = decode(client.hgetall(batch_key(batch_id)))
        if not info:
            client.zrem(BATCHES, batch_id)
            continue
        try:
            job: Job | None = Job.fetch(batch_id, connection=client, serializer=JSONSerializer)
        except NoSuchJobError:
            job = None
        status = str(job.get_status(refresh=False)) if job is not None else None
        status = status.rsplit(".", 1)[-1].lower() if status else None
        if status == "finished":
            client.zrem(BATCHES, batch_id)
            client.delete(batch_key(batch_id))
            continue
        if status in _WAITING and (status != "queued" or _in_queue(client, batch_id)):
            client.zadd(BATCHES, {batch_id: now() + lease})  # still waiting its turn
            continue
        if score > current:
            continue  # taken by a worker whose lease is still good
        if client.exists(batch_owner_key(batch_id)):  # its worker still holds the batch (its index entry lagged)
            client.zadd(BATCHES, {batch_id: current + lease})
            continue
        if status == "queued":  # taken off the queue by a worker but not started: in RQ's hand-over, or lost
            limbo_since = float(info.get("limbo_since") or 0)
            if not limbo_since:
                client.hset(batch_key(batch_id), "limbo_since", current)
            if not limbo_since or current - limbo_since < lease:
                client.zadd(BATCHES, {batch_id: current + lease})
                continue
        if status == "started" and job is not None and job.started_at is not None:
            started = job.started_at.replace(tzinfo=UTC).timestamp()
            if current - started < lease:  # run_batch has not taken over its lease yet
                client.zadd(BATCHES, {batch_id: started + lease})
                continue
        # Started with a lease nobody renews (the worker died), failed or gone: run it again elsewhere.
        ids: list[str] = orjson.loads(info["ids"])
        keys = [job_key(i) for i in ids]
        client.eval(REQUEUE_LUA, len(keys), *keys)
        attempts = int(info.get("attempts") or 0) + 1
        client.zrem(BATCHES, batch_id)
        client.delete(batch_key(batch_id))
        if job is not None:
            job.delete(remove_from_queue=True)
        if attempts >= MAX_ATTEMPTS:
            _give_up(client, settings, ids, attempts)
            continue
        new_id = enqueue_batch(client, info["service"], info["model"], int(info["version"]), ids, lease)
        client.hset(batch_key(new_id), "attempts", attempts)
        log.warning("re-queued async batch %s as %s (attempt %d, was %s)", batch_id, new_id, attempts + 1, status)
        requeued += 1
    return requeued


def _give_up(client: redis.Redis, settings: Settings, ids: list[str], attempts: int) -> None:
    problem = ModelServeError(
        f"The prediction was interrupted {attempts} times (its worker died); giving up"
    ).to_problem()
    keys = [job_key(i) for i in ids]
    client.eval(START_LUA, len(keys), *keys, now())
    for key in keys:
        client.eval(
            FINISH_LUA, 1, key, "failed", "error", orjson.dumps(problem), now(), settings.job_result_ttl_seconds
        )
    client.publish(DONE_CHANNEL, orjson.dumps(ids))
