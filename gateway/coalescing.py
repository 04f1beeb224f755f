"""Calls to a service's replicas: one call balanced and retried over the replicas, and the predict coalescer
that sends concurrent predicts for one service as ONE upstream call, each caller keeping its own identity."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson

from gateway.routing import Route
from gateway.upstream import Upstreams
from shared.auth import Principal
from shared.errors import ModelServeError, ServiceUnavailable, UpstreamError

log = logging.getLogger(__name__)
MAX_TRIES = 3
"""Replicas one call tries before answering 503 (a predict is idempotent, so a failed connection retries)."""


class ReplicasUnavailable(ServiceUnavailable):
    """No replica answered; `internal` says why, with addresses, for admin keys and the log only."""

    def __init__(self, service: str, internal: str) -> None:
        super().__init__(f"No replica of '{service}' answered; retry shortly", headers={"Retry-After": "1"})
        self.internal = internal

    def for_caller(self, principal: Principal | None) -> ServiceUnavailable:
        """This error as `principal` may see it: internal details only for admin keys."""
        if principal is None or "admin" not in principal.scopes:
            return self
        return ServiceUnavailable(f"{self.detail}: {self.internal}", headers=dict(self.headers))


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str


async def call_replicas(
    upstreams: Upstreams,
    route: Route,
    path: str,
    body: bytes,
    headers: dict[str, str],
    on_dead: Callable[[], None],
) -> Answer:
    """One replica after another in round-robin order; `on_dead` hears of a replica that could not be reached."""
    last_error = "no replica"
    for url in route.ordered()[:MAX_TRIES]:
        try:
            async with upstreams.session.post(url + path, data=body, headers=headers) as resp:
                content = await resp.read()
                if resp.status == 503:  # draining or still loading: another replica may answer
                    last_error = f"replica {url} is not ready"
                    continue
                return Answer(resp.status, content, resp.content_type)
        except aiohttp.ClientError as exc:
            # Refused, reset, or cut mid-answer (a replica killed while replying): predict is idempotent.
            last_error = f"{url}: {exc}"
            on_dead()
    log.warning("no replica of %s answered: %s", route.name, last_error)
    raise ReplicasUnavailable(route.name, last_error)


@dataclass(eq=False, slots=True)
class _Waiting:
    body: bytes
    principal: Principal | None
    request_id: str
    future: asyncio.Future[tuple[int, bytes]]


class PredictCoalescer:
    """Concurrent predicts for one service travel to a replica as ONE `/predict-many` call.

    Each service may have one batch in flight per ready replica; requests arriving meanwhile wait and go
    together in the next one, so a lone request is sent at once (no added delay) and a busy service pays the
    extra hop once per batch. Every request still gets its own status and body, and errors as its own key may
    see them. The batch carries each request's id in its body and no principal: it acts for no single caller.
    """

    MAX_REQUESTS = 256
    IN_FLIGHT_PER_REPLICA = 2
    """Batches in flight per ready replica: while one is computed the next one travels and is parsed."""

    def __init__(self, name: str, upstreams: Upstreams, on_dead: Callable[[], None]) -> None:
        self.name = name
        self._upstreams = upstreams
        self._on_dead = on_dead
        self._waiting: list[_Waiting] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self, route: Route, body: bytes, principal: Principal | None, request_id: str
    ) -> tuple[int, bytes]:
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(body, principal, request_id, future))
        if self._in_flight < self.IN_FLIGHT_PER_REPLICA * max(1, len(route.replicas)):
            self._in_flight += 1
            task = asyncio.create_task(self._drain(route))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, route: Route) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.MAX_REQUESTS]
                del self._waiting[: self.MAX_REQUESTS]
                await self._send(route, batch)
        finally:
            self._in_flight -= 1

    async def _send(self, route: Route, batch: list[_Waiting]) -> None:
        ids = orjson.dumps([w.request_id for w in batch])
        payload = b'{"requests":[' + b",".join(w.body for w in batch) + b'],"request_ids":' + ids + b"}"
        # The drain task inherited the first caller's context: name the batch itself, never that caller.
        batch_id = f"batch-{random.getrandbits(64):016x}"
        headers = {**self._upstreams.internal_headers(request_id=batch_id), "Content-Type": "application/json"}
        try:
            answer = await call_replicas(self._upstreams, route, "/predict-many", payload, headers, self._on_dead)
            data = orjson.loads(answer.body)
            if answer.status != 200:
                raise ModelServeError.from_problem(data, answer.status)
            for waiting, reply in zip(batch, data["responses"], strict=True):
                if not waiting.future.done():
                    waiting.future.set_result((reply["status"], orjson.dumps(reply["body"])))
        except Exception as exc:
            if not isinstance(exc, ModelServeError):
                log.warning("bad answer from a replica of %s: %r", self.name, exc)
            error = exc if isinstance(exc, ModelServeError) else UpstreamError("Bad answer from a replica")
            for waiting in batch:
                if not waiting.future.done():
                    shown = error.for_caller(waiting.principal) if isinstance(error, ReplicasUnavailable) else error
                    waiting.future.set_exception(shown)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
