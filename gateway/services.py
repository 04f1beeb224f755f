"""Fast return: `POST /api/v1/services/{name}/predict`, balanced over the service's ready replicas."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import Counter, Gauge, Histogram

from gateway.routing import Route, RoutingTable
from shared.errors import (
    ModelServeError,
    NotFound,
    ServiceUnavailable,
    UpstreamError,
    ValidationFailed,
    field_error,
)
from shared.metrics import LATENCY_BUCKETS

router = APIRouter(tags=["services"])

SERVICE_REQUESTS = Counter(
    "modelserve_service_requests_total", "Predict requests per service, by HTTP status.", ["service", "status"]
)
SERVICE_LATENCY = Histogram(
    "modelserve_service_request_duration_seconds", "Predict latency per service.", ["service"], buckets=LATENCY_BUCKETS
)
SERVICE_IN_FLIGHT = Gauge(
    "modelserve_service_in_flight", "Predict requests in flight per service.", ["service"], multiprocess_mode="livesum"
)

_PREDICT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": {"inputs": {"X": [5.1, 3.5, 1.4, 0.2]}},
                "schema": {
                    "description": "{'inputs': {...}}, {'inputs': [{...}, ...]} or {'columns': [...], 'data': [[...]]}"
                },
            }
        },
    }
}


async def route_for(table: RoutingTable, name: str) -> Route:
    route = table.get(name)
    if route is None or (not route.replicas and not route.paused):
        # Created, or made ready, a moment ago and the event has not arrived yet: ask before refusing.
        await table.refresh()
        route = table.get(name)
    if route is None:
        raise NotFound(f"Service '{name}' does not exist")
    if route.paused:
        raise ServiceUnavailable(f"Service '{name}' is paused", headers={"Retry-After": "5"})
    if not route.replicas:
        reason = "has failed" if route.status == "failed" else "has no ready replica yet"
        raise ServiceUnavailable(f"Service '{name}' {reason}", headers={"Retry-After": "1"})
    return route


async def send_to_replicas(request: Request, route: Route, path: str, body: bytes, content_type: str) -> Response:
    """One replica after another in round-robin order: a predict is idempotent, so a failed connection retries."""
    upstreams = request.app.state.upstreams
    headers = {**upstreams.internal_headers(getattr(request.state, "principal", None)), "Content-Type": content_type}
    last_error: Exception | None = None
    for url in route.ordered()[:3]:
        try:
            async with upstreams.session.post(url + path, data=body, headers=headers) as resp:
                content = await resp.read()
                if resp.status == 503:  # draining or still loading: another replica may answer
                    last_error = UpstreamError(f"replica {url} is not ready")
                    continue
                return Response(content, status_code=resp.status, media_type=resp.content_type)
        except aiohttp.ClientError as exc:
            # Refused, reset, or cut mid-answer (a replica killed while replying): predict is idempotent.
            last_error = exc
            request.app.state.routing.invalidate()
    raise ServiceUnavailable(
        f"No replica of '{route.name}' answered: {last_error}", headers={"Retry-After": "1"}
    ) from last_error


@dataclass(eq=False)
class _Waiting:
    body: bytes
    future: asyncio.Future[tuple[int, bytes]]


class PredictCoalescer:
    """Concurrent predicts for one service travel to a replica as ONE upstream call.

    Each service may have one batch in flight per ready replica; requests arriving meanwhile wait and
    go together in the next one, so a lone request is sent at once (no added delay) and a busy service
    pays the extra hop once per batch. Every request still gets its own status and body.
    """

    MAX_REQUESTS = 256
    IN_FLIGHT_PER_REPLICA = 2
    """Batches in flight per ready replica: while one is computed the next one travels and is parsed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._waiting: list[_Waiting] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: Request, route: Route, body: bytes) -> tuple[int, bytes]:
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(body, future))
        if self._in_flight < self.IN_FLIGHT_PER_REPLICA * max(1, len(route.replicas)):
            self._in_flight += 1
            task = asyncio.create_task(self._drain(request, route))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, request: Request, route: Route) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.MAX_REQUESTS]
                del self._waiting[: self.MAX_REQUESTS]
                await self._send(request, route, batch)
        finally:
            self._in_flight -= 1

    async def _send(self, request: Request, route: Route, batch: list[_Waiting]) -> None:
        payload = b'{"requests":[' + b",".join(w.body for w in batch) + b"]}"
        try:
            answer = await send_to_replicas(request, route, "/predict-many", payload, "application/json")
            data = orjson.loads(answer.body)
            if answer.status_code != 200:
                raise ModelServeError.from_problem(data, answer.status_code)
            for waiting, reply in zip(batch, data["responses"], strict=True):
                if not waiting.future.done():
                    waiting.future.set_result((reply["status"], orjson.dumps(reply["body"])))
        except Exception as exc:
            error = exc if isinstance(exc, ModelServeError) else UpstreamError(f"Bad answer from a replica: {exc}")
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)


def _coalescer(request: Request, name: str) -> PredictCoalescer:
    coalescers: dict[str, PredictCoalescer] = request.app.state.predict_coalescers
    found = coalescers.get(name)
    if found is None:
        found = coalescers[name] = PredictCoalescer(name)
    return found


@router.post(
    "/api/v1/services/{name}/predict",
    summary="Predict synchronously (fast return)",
    openapi_extra=_PREDICT_DOC,
    response_model=None,
)
async def predict(name: str, request: Request) -> Response:
    content_type = request.headers.get("content-type", "application/json")
    if content_type.split(";")[0].strip() != "application/json":
        return await predict_file(request, name, content_type)  # files go to a replica as they are
    return await predict_json(request, name, await request.body())


async def predict_json(request: Request, name: str, body: bytes) -> Response:
    """A JSON predict: checked to be JSON, then coalesced with its neighbours into one upstream call.

    Called by the route above and by `gateway.fastlane.FastLane`, which skips FastAPI's routing for this hot path.
    """
    with _service_metrics(name).track() as outcome:
        route = await route_for(request.app.state.routing, name)
        try:
            orjson.loads(body)  # one malformed body must not spoil the batch it would join
        except orjson.JSONDecodeError as exc:
            raise ValidationFailed("Invalid JSON", errors=[field_error("body", f"not valid JSON: {exc}")]) from exc
        status, content = await _coalescer(request, name).submit(request, route, body)
        outcome.status = status
        media = "application/json" if status < 400 else "application/problem+json"
        return Response(content, status_code=status, media_type=media)


async def predict_file(request: Request, name: str, content_type: str) -> Response:
    with _service_metrics(name).track() as outcome:
        route = await route_for(request.app.state.routing, name)
        response = await send_to_replicas(request, route, "/predict", await request.body(), content_type)
        outcome.status = response.status_code
        return response


class _ServiceMetrics:
    """One service's labelled metric children, looked up once: `labels()` costs more than the samples."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.in_flight = SERVICE_IN_FLIGHT.labels(name)
        self.latency = SERVICE_LATENCY.labels(name)
        self._requests: dict[int, Counter] = {}

    def track(self) -> _Tracked:
        """`with metrics.track() as outcome:` around one predict; set `outcome.status` (a raised error's own
        status is taken otherwise). A plain context manager: an async generator one cost more per request."""
        return _Tracked(self)

    def done(self, status: int, start: float) -> None:
        """One predict ended with `status`."""
        self.in_flight.dec()
        counter = self._requests.get(status)
        if counter is None:
            counter = self._requests[status] = SERVICE_REQUESTS.labels(self.name, str(status))
        counter.inc()
        self.latency.observe(time.perf_counter() - start)


class _Tracked:
    __slots__ = ("_metrics", "_start", "status")

    def __init__(self, metrics: _ServiceMetrics) -> None:
        self._metrics = metrics
        self.status = 500

    def __enter__(self) -> _Tracked:
        self._start = time.perf_counter()
        self._metrics.in_flight.inc()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> None:
        if exc is not None:
            self.status = getattr(exc, "status", 500)
        self._metrics.done(self.status, self._start)


_SERVICE_METRICS: dict[str, _ServiceMetrics] = {}
_MAX_SERVICE_METRICS = 10_000


def _service_metrics(name: str) -> _ServiceMetrics:
    found = _SERVICE_METRICS.get(name)
    if found is None:
        if len(_SERVICE_METRICS) >= _MAX_SERVICE_METRICS:  # names come from URLs: keep the cache bounded
            _SERVICE_METRICS.clear()
        found = _SERVICE_METRICS[name] = _ServiceMetrics(name)
    return found
