"""Prometheus helpers: HTTP request metrics, process-up, and one exposition for all local processes.

In local mode (`modelserve up`) every process writes its samples to a shared
``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode), so one scrape of the
gateway shows the whole platform. Run alone (compose, Kubernetes), each process exposes its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter(
    "modelserve_http_requests_total",
    "HTTP requests handled, by process, route template, method and status.",
    ["process", "route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "modelserve_http_request_duration_seconds",
    "HTTP request latency, by process and route template.",
    ["process", "route", "method"],
    buckets=LATENCY_BUCKETS,
)
PROCESS_UP = Gauge(
    "modelserve_process_up",
    "1 for each live modelserve process.",
    ["process"],
    multiprocess_mode="livemax",
)
PROCESS_RESTARTS = Counter(
    "modelserve_process_restarts_total",
    "Child processes restarted by the supervisor after an unexpected exit.",
    ["process"],
)


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def mark_process_up(process: str) -> None:
    PROCESS_UP.labels(process=process).set(1)


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges (prometheus_client keeps its counters)."""
    if multiprocess_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


class _ExtraCollector:
    """Adapts a callable returning metric families to the collector protocol."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def render_metrics(extra: Callable[[], Iterable[Metric]] | None = None) -> Response:
    """The Prometheus text exposition of this process (or of all local processes in multiprocess mode)."""
    path = multiprocess_dir()
    if path is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(path))
    else:
        registry = REGISTRY
    if extra is not None:
        scratch = CollectorRegistry()
        scratch.register(_ExtraCollector(extra))  # type: ignore[arg-type]
        body = generate_latest(registry) + generate_latest(scratch)
    else:
        body = generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def gauge_family(name: str, doc: str, labels: list[str], samples: Iterable[tuple[list[str], float]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (not raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, process: str) -> None:
        self.app = app
        self.process = process
        # (route, method, status) -> the labelled children: `labels()` costs more than the samples themselves.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            key = (template, method, status)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    HTTP_REQUESTS.labels(self.process, template, method, str(status)),
                    HTTP_DURATION.labels(self.process, template, method),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - start)


async def metrics_endpoint(_: Request) -> Response:
    return render_metrics()
