"""Runs a batch of async predictions in a worker.

The worker process keeps one event loop on a daemon thread with the same `Predictor` the inference
replicas use (validation, session cache, micro-batcher): every job of a batch is submitted at once,
so the micro-batcher turns them into one engine call while each job keeps its own answer or error.
Sessions and the JVM stay loaded between batches (the worker does not fork).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import Future
from typing import Any

import orjson
import redis
from prometheus_client import Counter, Histogram
from rq import get_current_job

from inference.predictor import Predictor, VersionRef
from inference.resolver import VersionResolver
from inference.validation import records_from_body
from shared.artifacts import LocalArtifactStore
from shared.errors import ModelServeError
from shared.jobstore import (
    BATCHES,
    CALLBACK_TASK,
    DONE_CHANNEL,
    FINISH_LUA,
    START_LUA,
    batch_key,
    batch_owner_key,
    job_key,
    now,
)
from shared.leases import Lease
from shared.logging import request_id_var
from shared.redis import PREDICT_QUEUE, sync_redis
from shared.settings import Settings

log = logging.getLogger(__name__)
ASYNC_JOBS = Counter(
    "modelserve_async_jobs_total", "Async predictions finished, by service and status.", ["service", "status"]
)
ASYNC_LATENCY = Histogram(
    "modelserve_async_job_seconds",
    "Submit-to-result time of async predictions.",
    ["service"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


class _Engine:
    """One per worker process: an event loop thread holding the predictor and the version resolver."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, name="async-predict-loop", daemon=True).start()
        self._ready.wait()
        self.predictor: Predictor = self.call(self._make_predictor())
        self.resolver: VersionResolver = self.call(self._make_resolver())

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    async def _make_predictor(self) -> Predictor:
        return Predictor(self.settings, LocalArtifactStore(self.settings.artifacts_dir))

    async def _make_resolver(self) -> VersionResolver:
        return VersionResolver(self.settings)

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def engine(settings: Settings | None = None) -> _Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Engine(settings or Settings())
        return _engine


async def _predict_all(eng: _Engine, model: str, version: int, requests: list[bytes]) -> list[tuple[str, Any]]:
    try:
        ref: VersionRef = await eng.resolver.resolve(model, str(version))
    except ModelServeError as err:
        return [("error", err.to_problem())] * len(requests)

    async def one(raw: bytes) -> tuple[str, Any]:
        try:
            result = await eng.predictor.predict(ref, records_from_body(orjson.loads(raw)))
            return "result", {"predictions": result.predictions, "warnings": result.warnings}
        except ModelServeError as err:
            return "error", err.to_problem()
        except Exception as exc:  # a poison job fails alone; the worker keeps going
            log.exception("async prediction raised")
            return "error", ModelServeError(f"Prediction failed: {type(exc).__name__}: {exc}"[:1000]).to_problem()

    return list(await asyncio.gather(*(one(r) for r in requests)))


class _BatchLease:
    """This worker owns the batch (a `Lease`, renewed on a thread) and keeps its entry in `BATCHES` fresh; a
    killed worker stops renewing both, and the janitor re-queues the batch once its entry has run out."""

    def __init__(self, client: redis.Redis, batch_id: str, lease: int) -> None:
        self.client, self.batch_id, self.lease = client, batch_id, lease
        self.owner = Lease(client, batch_owner_key(batch_id), lease)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _BatchLease:
        self.owner.acquire()  # a second copy of the batch still runs (START_LUA starts each job once)
        self.client.zadd(BATCHES, {self.batch_id: now() + self.lease}, xx=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(max(1.0, self.lease / 3)):
            with contextlib.suppress(redis.RedisError):
                self.owner.extend()
                self.client.zadd(BATCHES, {self.batch_id: now() + self.lease}, xx=True)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.owner.release()  # token-checked


def run_batch(batch_id: str, service: str, model: str, version: int, ids: list[str]) -> dict[str, int]:
    """The RQ task: predict every still-queued job of the batch and store each result with its TTL."""
    settings = Settings()
    current = get_current_job()
    client = current.connection if current is not None else sync_redis(settings)
    eng = engine(settings)
    keys = [job_key(i) for i in ids]
    with _BatchLease(client, batch_id, settings.job_lease_seconds):
        started_positions = client.eval(START_LUA, len(keys), *keys, now()) if keys else []
        started = [ids[int(p) - 1] for p in started_positions]
        pipe = client.pipeline()
        for job_id in started:
            pipe.hmget(job_key(job_id), "request", "created_at", "callback_url", "request_id")
        rows = pipe.execute()
        token = request_id_var.set(rows[0][3].decode() if rows and rows[0][3] else None)
        try:
            outcomes = eng.call(_predict_all(eng, model, version, [r[0] or b"{}" for r in rows]))
        finally:
            request_id_var.reset(token)
        finished_at = now()
        callbacks = []
        pipe = client.pipeline()
        for job_id, (kind, payload), row in zip(started, outcomes, rows, strict=True):
            status = "succeeded" if kind == "result" else "failed"
            pipe.eval(FINISH_LUA, 1, job_key(job_id), status, kind, orjson.dumps(payload), finished_at,
                      settings.job_result_ttl_seconds)  # fmt: skip
            ASYNC_JOBS.labels(service, status).inc()
            ASYNC_LATENCY.labels(service).observe(finished_at - float(row[1] or finished_at))
            if row[2]:
                callbacks.append(job_id)
        pipe.zrem(BATCHES, batch_id)
        pipe.delete(batch_key(batch_id))
        pipe.publish(DONE_CHANNEL, orjson.dumps(started))
        pipe.execute()
    if callbacks:
        _queue_callbacks(client, settings, callbacks)
    return {"jobs": len(ids), "ran": len(started)}


def _queue_callbacks(client: redis.Redis, settings: Settings, ids: list[str]) -> None:
    from rq import Queue, Retry
    from rq.serializers import JSONSerializer

    queue = Queue(PREDICT_QUEUE, connection=client, serializer=JSONSerializer)
    attempts = max(1, settings.callback_max_attempts)
    intervals = [min(60, 2**i) for i in range(attempts - 1)] or [1]
    for job_id in ids:
        queue.enqueue_call(
            CALLBACK_TASK, args=(job_id,), retry=Retry(max=attempts - 1, interval=intervals) if attempts > 1 else None
        )


def warm_up() -> None:
    """Start the loop before the first batch (the worker calls this once at start)."""
    engine()


__all__ = ["run_batch", "warm_up"]
