"""The janitor re-queues what a dead worker or gateway left behind (real Redis, no worker needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from jobs.janitor import MAX_ATTEMPTS, UNBATCHED_GRACE_SECONDS, sweep
from shared.jobstore import BATCHES, START_LUA, UNBATCHED, batch_key, decode, enqueue_batch, job_key, now
from shared.redis import PREDICT_QUEUE
from shared.settings import Settings


def _record(client: redis.Redis, job_id: str, status: str = "queued") -> None:
    client.hset(job_key(job_id), mapping={"id": job_id, "status": status, "service": "s", "model": "m",
                                          "version": 1, "created_at": now(), "ttl": 60, "request": "{}"})  # fmt: skip


def _queue(client: redis.Redis) -> Queue:
    return Queue(PREDICT_QUEUE, connection=client, serializer=JSONSerializer)


def test_waiting_batch_keeps_its_place(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    _record(client, "a")
    batch = enqueue_batch(client, "s", "m", 1, ["a"], lease_seconds=-1)  # lease already expired
    sweep(client, settings)
    assert _queue(client).job_ids == [batch]
    assert client.zscore(BATCHES, batch) > now()


def test_batch_of_a_dead_worker_is_requeued_then_given_up(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    for job_id in ("a", "b"):
        _record(client, job_id)
    batch = enqueue_batch(client, "s", "m", 1, ["a", "b"], lease_seconds=-1)
    _queue(client).remove(batch)  # a worker took it...
    client.eval(START_LUA, 2, job_key("a"), job_key("b"), now())  # ...started the jobs, then died
    client.hset(job_key("b"), "status", "succeeded")  # one had finished before the kill
    assert sweep(client, settings)["requeued"] == 0  # off the queue but not started: maybe a hand-over
    client.hset(batch_key(batch), "limbo_since", now() - settings.job_lease_seconds - 1)
    client.zadd(BATCHES, {batch: now() - 1})
    assert sweep(client, settings)["requeued"] == 1  # still there a lease later: its worker is gone
    [fresh] = _queue(client).job_ids
    assert fresh != batch and decode(client.hgetall(job_key("a")))["status"] == "queued"
    assert decode(client.hgetall(job_key("b")))["status"] == "succeeded"

    for _ in range(MAX_ATTEMPTS):  # it keeps dying
        current = _queue(client).job_ids
        if not current:
            break
        _queue(client).remove(current[0])
        client.zadd(BATCHES, {current[0]: now() - 1})
        client.hset(batch_key(current[0]), "limbo_since", now() - settings.job_lease_seconds - 1)
        sweep(client, settings)
    record = decode(client.hgetall(job_key("a")))
    assert record["status"] == "failed" and "interrupted" in orjson.loads(record["error"])["detail"]


def test_waiting_batch_is_renewed_before_its_lease_ends(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    _record(client, "a")
    batch = enqueue_batch(client, "s", "m", 1, ["a"], lease_seconds=1)  # ends before the next tick or two
    sweep(client, settings)
    assert client.zscore(BATCHES, batch) >= now() + settings.job_lease_seconds - 1


def _started(client: redis.Redis, batch: str, seconds_ago: float) -> None:
    job = Job.fetch(batch, connection=client, serializer=JSONSerializer)
    _queue(client).remove(batch)
    job.started_at = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    job.set_status(JobStatus.STARTED)
    job.save()
    client.zadd(BATCHES, {batch: now() - 1})


def test_just_started_batch_gets_its_lease_not_a_requeue(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    _record(client, "a")
    batch = enqueue_batch(client, "s", "m", 1, ["a"], lease_seconds=-1)
    _started(client, batch, seconds_ago=0.01)  # RQ marked it started; run_batch has not renewed yet
    assert sweep(client, settings)["requeued"] == 0
    assert client.zscore(BATCHES, batch) > now()

    _started(client, batch, seconds_ago=settings.job_lease_seconds + 1)  # and nobody ever renewed it
    assert sweep(client, settings)["requeued"] == 1
    assert _queue(client).job_ids and _queue(client).job_ids[0] != batch


def test_accepted_but_never_batched_ids_are_queued(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    _record(client, "lost")
    client.zadd(UNBATCHED, {"lost": now() - UNBATCHED_GRACE_SECONDS - 1})
    _record(client, "fresh")
    client.zadd(UNBATCHED, {"fresh": now()})  # its gateway may still flush it
    assert sweep(client, settings)["batched"] == 1
    [batch] = _queue(client).job_ids
    assert orjson.loads(client.hget(batch_key(batch), "ids")) == ["lost"]
    assert client.zscore(UNBATCHED, "fresh") is not None


def test_two_schedulers_never_sweep_at_once(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url or "")
    client.set("modelserve:async:janitor-lock", "1", ex=10)
    _record(client, "x")
    client.zadd(UNBATCHED, {"x": 0})
    assert sweep(client, settings) == {}


def test_a_batch_whose_worker_holds_its_lease_is_not_requeued(settings: Settings) -> None:
    from shared.jobstore import batch_owner_key
    from shared.leases import Lease

    client = redis.Redis.from_url(settings.redis_url or "")
    _record(client, "a")
    batch = enqueue_batch(client, "s", "m", 1, ["a"], lease_seconds=-1)
    _started(client, batch, seconds_ago=settings.job_lease_seconds + 1)  # its index entry ran out long ago
    owner = Lease(client, batch_owner_key(batch), 30)
    assert owner.acquire()  # ... but the worker running it is alive and holds the batch
    assert sweep(client, settings)["requeued"] == 0
    assert client.zscore(BATCHES, batch) > now()
    assert owner.release()
    client.zadd(BATCHES, {batch: now() - 1})
    assert sweep(client, settings)["requeued"] == 1  # nobody holds it: its worker is gone
