"""Wait return, transport-free: store submissions, queue them (coalesced), read and long-poll, cancel, list.

Submissions that arrive within `async_coalesce_ms` for one service version travel as ONE RQ job
(RQ costs ~14 Redis round trips a job); each keeps its own id, status and result. The REST routes
(`gateway.api_v1`) and any other transport call `JobQueue` through the data plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
import redis.asyncio
from prometheus_client import Counter

from gateway.routing import Route
from shared.auth import Principal
from shared.errors import Conflict, NotFound, ValidationFailed, field_error
from shared.jobstore import (
    CANCEL_LUA,
    DONE_CHANNEL,
    FINAL,
    SUBMIT_LUA,
    UNBATCHED,
    decode,
    enqueue_batch,
    job_key,
    now,
    public,
    service_jobs_key,
)
from shared.settings import Settings

log = logging.getLogger(__name__)
SUBMITTED = Counter("modelserve_async_submitted_total", "Async predictions accepted, by service.", ["service"])
MAX_TTL = 7 * 24 * 3600
LIST_LIMIT = 10_000  # per service; older ids fall off the listing (their records expire by TTL)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


class JobWaiters:
    """Long-polls waiting for jobs to end, woken by the workers' `done` messages (no polling loop per waiter)."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    def register(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(job_id, set()).add(event)
        return event

    def unregister(self, job_id: str, event: asyncio.Event) -> None:
        events = self._events.get(job_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[job_id]

    def wake(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            for event in self._events.get(job_id, ()):
                event.set()


class Coalescer:
    """Gathers submissions per (service, model, version) and queues them as one batch."""

    def __init__(self, settings: Settings, sync_client: Callable[[], redis.Redis]) -> None:
        self.settings = settings
        self._sync_client = sync_client
        self._pending: dict[tuple[str, str, int], list[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, service: str, model: str, version: int, job_id: str) -> None:
        key = (service, model, version)
        batch = self._pending.setdefault(key, [])
        batch.append(job_id)
        if len(batch) >= self.settings.async_max_batch:
            self._spawn(self._flush(key, 0.0))
        elif len(batch) == 1:
            self._spawn(self._flush(key, self.settings.async_coalesce_ms / 1000))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, key: tuple[str, str, int], delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        ids = self._pending.pop(key, [])
        if not ids:
            return
        service, model, version = key
        try:
            await asyncio.to_thread(self._enqueue, service, model, version, ids)
        except Exception:
            # The ids stay in UNBATCHED: the scheduler's janitor queues them within seconds.
            log.exception("could not queue %d async jobs for %s; the janitor will", len(ids), service)

    def _enqueue(self, service: str, model: str, version: int, ids: list[str]) -> None:
        client = self._sync_client()
        enqueue_batch(client, service, model, version, ids, self.settings.job_lease_seconds)
        client.zrem(UNBATCHED, *ids)

    async def close(self) -> None:
        for key in list(self._pending):
            await self._flush(key, 0.0)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _check_callback(url: Any, settings: Settings) -> str | None:
    if url is None:
        return None
    parts = urlsplit(str(url))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed(
            "Invalid callback_url", errors=[field_error("callback_url", "an http(s) URL", received=str(url)[:200])]
        )
    if parts.hostname not in settings.callback_allowed_hosts:
        raise ValidationFailed(
            "callback_url host is not allowed",
            errors=[
                field_error("callback_url", "host not in MODELSERVE_CALLBACK_ALLOWED_HOSTS", received=parts.hostname)
            ],
        )
    return str(url)


def _ttl(value: Any, settings: Settings) -> int:
    if value is None:
        return settings.job_result_ttl_seconds
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TTL:
        raise ValidationFailed(
            "Invalid ttl_seconds",
            errors=[field_error("ttl_seconds", f"an integer from 1 to {MAX_TTL}", received=value)],
        )
    return value


def _check_predict_body(body: Any) -> None:
    # Full validation against the model happens in the worker; refuse what can never be a predict body now.
    if not isinstance(body, dict):
        raise ValidationFailed("Expected a JSON object", errors=[field_error("body", "expected an object")])
    if "inputs" not in body and not ("columns" in body and "data" in body):
        raise ValidationFailed(
            "Missing inputs",
            errors=[field_error("inputs", "send {'inputs': {...}}, {'inputs': [...]} or {'columns', 'data'}")],
        )


class JobQueue:
    """Async predictions in Redis: what the data plane's `submit`, `read_job`, `cancel_job` and `list_jobs` do."""

    def __init__(self, settings: Settings, client: redis.asyncio.Redis, sync_client: Callable[[], redis.Redis]) -> None:
        self.settings = settings
        self.redis = client
        self._submit_script = client.register_script(SUBMIT_LUA)
        self.waiters = JobWaiters()
        self.coalescer = Coalescer(settings, sync_client)

    async def close(self) -> None:
        await self.coalescer.close()

    async def submit(self, route: Route, raw: bytes, principal: Principal | None, request_id: str) -> dict[str, str]:
        """Store one submission and hand it to the coalescer; the 202 body."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValidationFailed("Invalid JSON", errors=[field_error("body", f"not valid JSON: {exc}")]) from exc
        _check_predict_body(body)
        callback = _check_callback(body.pop("callback_url", None), self.settings)
        ttl = _ttl(body.pop("ttl_seconds", None), self.settings)
        job_id = secrets.token_urlsafe(18)  # unguessable: the id is the handle to the result
        created = now()
        record = {
            "id": job_id,
            "status": "queued",
            "service": route.name,
            "model": route.model,
            "version": route.version or 0,
            "created_at": created,
            "ttl": ttl,
            "request": orjson.dumps(body),
            "callback_url": callback or "",
            "key_id": principal.key_id if principal else "",
            "request_id": request_id,
            "attempts": 0,
        }
        fields: list[Any] = [item for pair in record.items() for item in pair]
        # Expires an hour after its TTL unless the finish shortens it to the result's TTL.
        keys = [job_key(job_id), service_jobs_key(route.name), UNBATCHED]
        args: list[Any] = [ttl + 3600, created, job_id, LIST_LIMIT, *fields]
        await self._submit_script(keys=keys, args=args)
        self.coalescer.add(route.name, route.model, route.version or 0, job_id)
        SUBMITTED.labels(route.name).inc()
        return {"id": job_id, "status": "queued", "url": f"/api/v1/jobs/{job_id}"}

    async def _readable(self, job_id: str, principal: Principal | None) -> dict[str, str]:
        raw = await self.redis.hgetall(job_key(job_id))
        record = decode(raw) if raw else None
        # 404, not 403: a key that may not call the service learns nothing about its jobs.
        if record is None or (principal is not None and not principal.allows("predict", record.get("service"))):
            raise NotFound(f"Job '{job_id}' does not exist or has expired")
        return record

    async def read(self, job_id: str, wait: float, principal: Principal | None) -> dict[str, Any]:
        """A job as the caller may see it, after waiting up to `wait` s for it to end."""
        if wait > self.settings.job_wait_max_seconds:
            raise ValidationFailed(
                "wait too long",
                errors=[field_error("wait", f"at most {self.settings.job_wait_max_seconds} seconds", received=wait)],
            )
        if wait <= 0:
            return public(await self._readable(job_id, principal))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        event = self.waiters.register(job_id)  # before the read: a job ending in between still wakes us
        try:
            record = await self._readable(job_id, principal)
            while record.get("status") not in FINAL and (left := deadline - loop.time()) > 0:
                # Woken by the worker's message; re-read every second anyway in case a message was missed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, 1.0))
                event.clear()
                record = await self._readable(job_id, principal)
        finally:
            self.waiters.unregister(job_id, event)
        return public(record)

    async def cancel(self, job_id: str, principal: Principal | None) -> dict[str, Any]:
        await self._readable(job_id, principal)
        outcome = await self.redis.eval(CANCEL_LUA, 1, job_key(job_id), now())  # type: ignore[misc]
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        if outcome != "cancelled":
            raise Conflict(
                f"Job '{job_id}' is {outcome or 'gone'}; only queued jobs can be cancelled", job_status=outcome
            )
        await self.redis.zrem(UNBATCHED, job_id)
        await self.redis.publish(DONE_CHANNEL, orjson.dumps([job_id]))
        return public(await self._readable(job_id, principal))

    async def list(self, service: str, status: str | None, limit: int, offset: int) -> dict[str, Any]:
        client = self.redis
        found = await client.zrevrange(service_jobs_key(service), 0, LIST_LIMIT)
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in found]
        pipe = client.pipeline()
        for job_id in ids:
            pipe.hmget(job_key(job_id), "status")
        statuses = [s[0].decode() if s and s[0] else None for s in await pipe.execute()]
        matching = [i for i, s in zip(ids, statuses, strict=True) if s is not None and (status is None or s == status)]
        page = matching[offset : offset + limit]
        pipe = client.pipeline()
        for job_id in page:
            pipe.hgetall(job_key(job_id))
        items = []
        for raw in await pipe.execute():
            if raw:
                item = public(decode(raw))
                item.pop("predictions", None)  # a listing stays small: fetch one job for its result
                items.append(item)
        return {"items": items, "total": len(matching), "limit": limit, "offset": offset}
