"""Async ("wait return") jobs in Redis: one hash per submission, batches of them queued as one RQ job.

The gateway writes records and enqueues batches; workers run them; the scheduler's janitor re-queues
batches whose worker died. Only ids and plain data go through RQ (JSON serializer, never pickle).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import orjson

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

BATCHES = "modelserve:async:batches"
"""Sorted set: batch id -> lease expiry (epoch seconds). The janitor re-queues expired ones."""
DONE_CHANNEL = "modelserve:async:done"
"""Pub/sub: a JSON list of job ids that just ended; wakes the long-polls waiting for them."""
UNBATCHED = "modelserve:async:unbatched"
"""Sorted set: accepted job ids not yet in a queued batch (a gateway that died before flushing leaves them)."""
BATCH_RUN_TASK = "jobs.async_predict.run_batch"
CALLBACK_TASK = "jobs.callbacks.deliver_callback"


def job_key(job_id: str) -> str:
    return f"modelserve:async:job:{job_id}"


def batch_key(batch_id: str) -> str:
    return f"modelserve:async:batch:{batch_id}"


def batch_owner_key(batch_id: str) -> str:
    """The `shared.leases.Lease` of the worker running a batch: while it is held the batch is not re-queued."""
    return f"modelserve:async:batch-owner:{batch_id}"


def service_jobs_key(service: str) -> str:
    """Sorted set of a service's job ids by creation time (listing)."""
    return f"modelserve:async:service:{service}"


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()
    }


def public(record: dict[str, str]) -> dict[str, Any]:
    """A job as `GET /api/v1/jobs/{id}` answers it (and a callback delivers it)."""
    status = record.get("status", "queued")
    body: dict[str, Any] = {
        "id": record["id"],
        "status": status,
        "service": record.get("service"),
        "model": record.get("model"),
        "version": int(record["version"]) if record.get("version") else None,
        "created_at": iso(float(record.get("created_at") or 0)),
        "started_at": iso(float(record.get("started_at") or 0)),
        "finished_at": iso(float(record.get("finished_at") or 0)),
        "attempts": int(record.get("attempts") or 0),
        "url": f"/api/v1/jobs/{record['id']}",
    }
    if status == "succeeded" and record.get("result"):
        result = orjson.loads(record["result"])
        body["predictions"] = result.get("predictions", [])
        body["warnings"] = result.get("warnings", [])
    if status == "failed" and record.get("error"):
        body["error"] = orjson.loads(record["error"])
    return body


# State changes are compare-and-set in Lua so a cancel, a worker and a re-queue never overwrite each other.
START_LUA = """
local started = {}
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'status') == 'queued' then
    redis.call('HSET', key, 'status', 'running', 'started_at', ARGV[1])
    redis.call('HINCRBY', key, 'attempts', 1)
    table.insert(started, i)
  end
end
return started
"""
FINISH_LUA = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[2], ARGV[3], 'finished_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(redis.call('HGET', KEYS[1], 'ttl') or ARGV[5]))
return 1
"""
CANCEL_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  return 'cancelled'
end
return status or ''
"""
SUBMIT_LUA = """
-- KEYS: job hash, the service's listing, unbatched. ARGV: expire seconds, created, job id, listing limit,
-- then the record's field/value pairs. One command instead of a five-command transaction.
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[4]) - 1)
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return 1
"""
REQUEUE_LUA = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'status') == 'running' then
    redis.call('HSET', key, 'status', 'queued')
    n = n + 1
  end
end
return n
"""


def enqueue_batch(redis: Any, service: str, model: str, version: int, ids: list[str], lease_seconds: int) -> str:
    """Queue one RQ job for several submissions (sync redis client). Returns the batch id."""
    import uuid

    from rq import Queue
    from rq.serializers import JSONSerializer

    from shared.redis import PREDICT_QUEUE

    batch_id = uuid.uuid4().hex
    pipe = redis.pipeline()
    pipe.multi()  # RQ expects a pipeline in transaction mode when it is handed one
    pipe.hset(batch_key(batch_id), mapping={"service": service, "model": model, "version": version,
                                            "ids": orjson.dumps(ids), "attempts": 0})  # fmt: skip
    # The lease starts at enqueue: a batch waiting in the queue has its lease extended by the janitor.
    pipe.zadd(BATCHES, {batch_id: now() + lease_seconds})
    # RQ's enqueue goes in the same pipeline: one round trip per batch instead of a dozen.
    Queue(PREDICT_QUEUE, connection=redis, serializer=JSONSerializer).enqueue_call(
        BATCH_RUN_TASK,
        args=(batch_id, service, model, version, ids),
        job_id=batch_id,
        result_ttl=60,
        failure_ttl=3600,
        timeout=600,
        pipeline=pipe,
    )
    pipe.execute()
    return batch_id
