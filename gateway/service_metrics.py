"""Per-service predict metrics (requests by status, latency, in flight) and the in-flight count admission reads.

Labels are created only for services in the routing table: a name that comes from a URL and names no service
is counted under `UNKNOWN`, so no caller can grow the number of Prometheus series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS

SERVICE_REQUESTS = Counter(
    "modelserve_service_requests_total", "Predict requests per service, by HTTP status.", ["service", "status"]
)
SERVICE_LATENCY = Histogram(
    "modelserve_service_request_duration_seconds", "Predict latency per service.", ["service"], buckets=LATENCY_BUCKETS
)
SERVICE_IN_FLIGHT = Gauge(
    "modelserve_service_in_flight", "Predict requests in flight per service.", ["service"], multiprocess_mode="livesum"
)
UNKNOWN = "_unknown"
"""The one label value requests for services that do not exist are counted under."""


class ServiceStats:
    """One service's labelled metric children, looked up once (`labels()` costs more than the samples), and
    its in-flight count in this process."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.active = 0
        self.in_flight = SERVICE_IN_FLIGHT.labels(name)
        self.latency = SERVICE_LATENCY.labels(name)
        self._requests: dict[int, Counter] = {}

    def track(self) -> Tracked:
        """`with stats.track() as outcome:` around one predict; set `outcome.status` (a raised error's own
        status is taken otherwise). A plain context manager: an async generator one cost more per request."""
        return Tracked(self)

    def done(self, status: int, start: float) -> None:
        self.active -= 1
        self.in_flight.dec()
        counter = self._requests.get(status)
        if counter is None:
            counter = self._requests[status] = SERVICE_REQUESTS.labels(self.name, str(status))
        counter.inc()
        self.latency.observe(time.perf_counter() - start)


class Tracked:
    __slots__ = ("_start", "_stats", "status")

    def __init__(self, stats: ServiceStats) -> None:
        self._stats = stats
        self.status = 500

    def __enter__(self) -> Tracked:
        self._start = time.perf_counter()
        self._stats.active += 1
        self._stats.in_flight.inc()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> None:
        if exc is not None:
            self.status = getattr(exc, "status", 500)
        self._stats.done(self.status, self._start)


class ServiceStatsBook:
    """`ServiceStats` by service name, for names the caller has checked exist (`UNKNOWN` otherwise)."""

    def __init__(self) -> None:
        self._stats: dict[str, ServiceStats] = {}

    def get(self, name: str | None) -> ServiceStats:
        """The stats of service `name`; None (no such service) gives the shared `UNKNOWN` entry."""
        key = name if name is not None else UNKNOWN
        found = self._stats.get(key)
        if found is None:
            found = self._stats[key] = ServiceStats(key)
        return found
