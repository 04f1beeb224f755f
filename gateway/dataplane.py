"""The gateway's core: one `GatewayDataPlane` that every transport (REST `/api/v1`, V2 REST, V2 gRPC, the console
API) calls with plain values, never with a request object.

It owns the routing table, the predict coalescers, the upstream client, per-service metrics and admission, the
API-key cache, the async job queue and its waiters, and the Redis event listener that keeps them fresh. Its
methods raise `ModelServeError`s only (Redis going away included), so each transport maps errors in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import orjson
import redis.exceptions

from gateway.async_jobs import JobQueue
from gateway.auth import KeyCache, authorise
from gateway.coalescing import PredictCoalescer, ReplicasUnavailable, call_replicas
from gateway.routing import Route, RoutingTable
from gateway.service_metrics import ServiceStats, ServiceStatsBook
from gateway.upstream import Upstreams
from shared.auth import Principal
from shared.auth import Scope as KeyScope
from shared.errors import ModelServeError, NotFound, ServiceUnavailable, ValidationFailed, field_error
from shared.jobstore import DONE_CHANNEL
from shared.json_bodies import loads_json
from shared.logging import request_id_var
from shared.redis import EVENTS_CHANNEL, async_redis, sync_redis
from shared.settings import Settings
from shared.tasks import stop_task

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
JSON = "application/json"
PROBLEM = "application/problem+json"
EventHandler = Callable[[dict[str, Any]], None]


class TooManyRequests(ModelServeError):
    status, title, slug = 429, "Too many requests", "too-many-requests"


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer as bytes, for a transport to send as it is."""

    status: int
    body: bytes
    media_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


def _queue_guard(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Redis unreachable is a 503 with Retry-After, whichever transport asked."""

    @wraps(method)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("Redis unavailable: %s", exc)
            raise ServiceUnavailable("The queue is unavailable; retry shortly", headers={"Retry-After": "2"}) from exc

    return guarded


def _check_json(body: bytes) -> None:
    try:
        loads_json(body)  # one malformed body must not spoil the batch it would join
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed("Invalid JSON", errors=[field_error("body", f"not valid JSON: {exc}")]) from exc


def check_version(route: Route, version: str | None) -> None:
    """404 unless `version` (when given) is the one the service serves."""
    if version is not None and str(route.version) != version:
        raise NotFound(f"Service '{route.name}' serves version {route.version}, not {version}")


class GatewayDataPlane:
    """Created in the gateway's lifespan (`start`, then `close`); stored on `app.state.dataplane`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.upstreams = Upstreams(settings)
        self.keys = KeyCache(self._verify_key)
        self.redis = async_redis(settings)
        self._sync_redis = sync_redis(settings)
        self.routing = RoutingTable(self.upstreams, settings.registry_url)
        self.jobs = JobQueue(settings, self.redis, lambda: self._sync_redis)
        self.stats = ServiceStatsBook()
        self.event_handlers: list[EventHandler] = []
        """Called with every registry change event (after the data plane's own caches are invalidated)."""
        self._coalescers: dict[str, PredictCoalescer] = {}
        self._stopping = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.routing.start()
        self._listener = asyncio.create_task(self._listen_events())

    async def close(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            await stop_task(self._listener)
        await self.jobs.close()
        for coalescer in self._coalescers.values():
            await coalescer.close()
        self._sync_redis.close()
        await self.routing.close()
        await self.upstreams.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.aclose(), 2)

    # --- auth -------------------------------------------------------------------------------------------------

    async def _verify_key(self, key: str) -> Principal:
        url = f"{self.settings.registry_url}/internal/keys/verify"
        return Principal.model_validate(await self.upstreams.call_json("POST", url, json={"key": key}))

    async def authorise(self, authorization: str | None, needed: KeyScope | None, service: str | None) -> Principal:
        """The principal behind an `Authorization` header value, when it has `needed`; 401/403 otherwise."""
        return await authorise(self.keys, authorization, needed, service)

    # --- routing ----------------------------------------------------------------------------------------------

    async def route(self, name: str) -> Route | None:
        """The service's route; a missing or replica-less one is asked for again (created a moment ago)."""
        route = self.routing.get(name)
        if route is None or (not route.replicas and not route.paused):
            await self.routing.refresh_on_miss()
            route = self.routing.get(name) or route
        if route is None and not self.routing.loaded:
            raise ServiceUnavailable("The routing table is not loaded yet; retry shortly", headers={"Retry-After": "1"})
        return route

    @staticmethod
    def _serving(name: str, route: Route | None) -> Route:
        if route is None:
            raise NotFound(f"Service '{name}' does not exist")
        if route.paused:
            raise ServiceUnavailable(f"Service '{name}' is paused", headers={"Retry-After": "5"})
        if not route.replicas:
            reason = "has failed" if route.status == "failed" else "has no ready replica yet"
            raise ServiceUnavailable(f"Service '{name}' {reason}", headers={"Retry-After": "1"})
        return route

    async def serving_route(self, name: str) -> Route:
        """The route of a service that can answer now: 404 unknown, 503 paused or without a ready replica."""
        return self._serving(name, await self.route(name))

    async def metadata(self, name: str, version: str | None = None) -> Route:
        """A known service's route with its model signature (what V2 metadata and infer decode against)."""
        route = await self.route(name)
        if route is None:
            raise NotFound(f"Service '{name}' does not exist")
        check_version(route, version)
        if route.signature is None or route.version is None:
            raise NotFound(f"Service '{name}' has no model version to describe")
        return route

    def _admit(self, stats: ServiceStats) -> None:
        # `stats.active` already counts this request.
        if stats.active > self.settings.gateway_service_max_in_flight:
            raise TooManyRequests(
                f"Service '{stats.name}' has too many predictions in flight; retry shortly",
                headers={"Retry-After": "1"},
            )

    def _coalescer(self, name: str) -> PredictCoalescer:
        found = self._coalescers.get(name)
        if found is None:
            found = self._coalescers[name] = PredictCoalescer(name, self.upstreams, self.routing.invalidate)
        return found

    # --- fast return ------------------------------------------------------------------------------------------

    async def predict(
        self, name: str, body: bytes, principal: Principal | None, request_id: str | None = None
    ) -> Reply:
        """A JSON predict, coalesced with its neighbours into one upstream call; the replica's answer as is."""
        route = await self.route(name)
        stats = self.stats.get(route.name if route is not None else None)
        with stats.track() as outcome:
            route = self._serving(name, route)
            self._admit(stats)
            _check_json(body)
            rid = request_id if request_id is not None else request_id_var.get() or ""
            status, content = await self._coalescer(name).submit(route, body, principal, rid)
            outcome.status = status
            return Reply(status, content, JSON if status < 400 else PROBLEM)

    async def predict_file(self, name: str, body: bytes, content_type: str, principal: Principal | None) -> Reply:
        """A predict whose body is a file (CSV, JSON lines…): sent to one replica as it is."""
        route = await self.route(name)
        stats = self.stats.get(route.name if route is not None else None)
        with stats.track() as outcome:
            route = self._serving(name, route)
            self._admit(stats)
            headers = {**self.upstreams.internal_headers(principal), "Content-Type": content_type}
            try:
                answer = await call_replicas(self.upstreams, route, "/predict", body, headers, self.routing.invalidate)
            except ReplicasUnavailable as err:
                raise err.for_caller(principal) from None
            outcome.status = answer.status
            return Reply(answer.status, answer.body, answer.content_type)

    async def infer(
        self, name: str, version: str | None, records: list[dict[str, Any]], principal: Principal | None
    ) -> dict[str, Any]:
        """Records decoded by a V2 transport, predicted through the coalescer: the replica's answer
        (`version`, `predictions`, `warnings`); a replica's error is raised as the same error."""
        route = await self.route(name)
        stats = self.stats.get(route.name if route is not None else None)
        with stats.track() as outcome:
            route = self._serving(name, route)
            check_version(route, version)
            self._admit(stats)
            body = orjson.dumps({"inputs": records}, option=orjson.OPT_SERIALIZE_NUMPY)
            status, content = await self._coalescer(name).submit(route, body, principal, request_id_var.get() or "")
            data = orjson.loads(content)
            if status >= 400:
                raise ModelServeError.from_problem(data, status)
            outcome.status = status
            return dict(data)

    # --- wait return ------------------------------------------------------------------------------------------

    @_queue_guard
    async def submit(
        self, name: str, body: bytes, principal: Principal | None, request_id: str | None = None
    ) -> dict[str, str]:
        """Queue one prediction; the 202 body (`id`, `status`, `url`)."""
        route = await self.serving_route(name)
        rid = request_id if request_id is not None else request_id_var.get() or ""
        return await self.jobs.submit(route, body, principal, rid)

    @_queue_guard
    async def read_job(self, job_id: str, wait: float, principal: Principal | None) -> dict[str, Any]:
        return await self.jobs.read(job_id, wait, principal)

    @_queue_guard
    async def cancel_job(self, job_id: str, principal: Principal | None) -> dict[str, Any]:
        return await self.jobs.cancel(job_id, principal)

    @_queue_guard
    async def list_jobs(self, name: str, status: str | None, limit: int, offset: int) -> dict[str, Any]:
        return await self.jobs.list(name, status, limit, offset)

    # --- change events ----------------------------------------------------------------------------------------

    async def _listen_events(self) -> None:
        """Invalidate caches on registry change events; reconnect when Redis goes away."""
        # redis-py may turn a cancel that lands mid-read into ConnectionError: the stop flag ends the loop regardless.
        while not self._stopping.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(EVENTS_CHANNEL, DONE_CHANNEL)
                # Anything cached before the subscription may be stale.
                self.keys.clear()
                self.routing.invalidate()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping.is_set():
                    return
                log.warning("event listener lost Redis; retrying", exc_info=True)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1)

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("channel") in (DONE_CHANNEL, DONE_CHANNEL.encode()):
            self.jobs.waiters.wake([str(i) for i in orjson.loads(message["data"])])
            return
        event = orjson.loads(message["data"])
        if event.get("kind") == "key":
            self.keys.clear()
        elif event.get("kind") in {"service", "alias", "model"}:
            self.routing.invalidate()
        for handler in self.event_handlers:
            handler(event)
