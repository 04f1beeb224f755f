"""Per-model inference statistics in Triton's shape, counted by the gateway for V2 calls (REST and gRPC).

The counts are Prometheus metrics, so under `modelserve up` (multiprocess mode) every gateway worker's
calls add up, and `/metrics` shows them too. Times are nanoseconds, `last_inference` milliseconds since
the epoch, as Triton reports them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.multiprocess import MultiProcessCollector

from shared.metrics import multiprocess_dir

REQUESTS = Counter(
    "modelserve_v2_inference_requests", "V2 inference requests per service and version, by outcome.",
    ["service", "version", "outcome"],
)  # fmt: skip
SECONDS = Counter(
    "modelserve_v2_inference_seconds", "Time spent on V2 inference requests, by outcome.",
    ["service", "version", "outcome"],
)  # fmt: skip
ROWS = Counter("modelserve_v2_inference_rows", "Rows (batch entries) inferred through V2.", ["service", "version"])
LAST = Gauge(
    "modelserve_v2_last_inference_timestamp_seconds", "When the last V2 inference ended.",
    ["service", "version"], multiprocess_mode="max",
)  # fmt: skip
_NAMES = {
    "modelserve_v2_inference_requests_total": "requests",
    "modelserve_v2_inference_seconds_total": "seconds",
    "modelserve_v2_inference_rows_total": "rows",
    "modelserve_v2_last_inference_timestamp_seconds": "last",
}


def record(service: str, version: int | None, ok: bool, seconds: float, rows: int) -> None:
    """One V2 inference of `rows` rows ended (successfully or not) after `seconds`."""
    labels = (service, str(version or ""))
    outcome = "success" if ok else "fail"
    REQUESTS.labels(*labels, outcome).inc()
    SECONDS.labels(*labels, outcome).inc(seconds)
    if ok:
        ROWS.labels(*labels).inc(rows)
        LAST.labels(*labels).set(time.time())


def _samples() -> dict[tuple[str, str], dict[str, float]]:
    path = multiprocess_dir()
    registry: Any = REGISTRY
    if path is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(path))
    found: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in registry.collect():
        for sample in family.samples:
            kind = _NAMES.get(sample.name)
            if kind is None:
                continue
            key = (sample.labels["service"], sample.labels["version"])
            outcome = sample.labels.get("outcome")
            slot = f"{kind}:{outcome}" if outcome else kind
            values = found[key]
            values[slot] = max(values[slot], sample.value) if kind == "last" else values[slot] + sample.value
    return found


def _duration(count: float = 0, seconds: float = 0) -> dict[str, int]:
    return {"count": int(count), "ns": int(seconds * 1e9)}


def model_statistics(wanted: dict[str, int | None]) -> list[dict[str, Any]]:
    """Triton's `model_stats` entries for the services in `wanted` (name -> version served), zeros if unused."""
    samples = _samples()
    stats = []
    for name, version in sorted(wanted.items()):
        values = samples.get((name, str(version or "")), {})
        success = _duration(values.get("requests:success", 0), values.get("seconds:success", 0))
        stats.append(
            {
                "name": name,
                "version": str(version or ""),
                "last_inference": int(values.get("last", 0) * 1000),
                "inference_count": int(values.get("rows", 0)),
                "execution_count": success["count"],
                "inference_stats": {
                    "success": success,
                    "fail": _duration(values.get("requests:fail", 0), values.get("seconds:fail", 0)),
                    # The gateway does not see a replica's queue or its compute phases apart: the whole time
                    # is the inference's, and nothing is cached.
                    "queue": _duration(),
                    "compute_input": _duration(),
                    "compute_infer": success,
                    "compute_output": _duration(),
                    "cache_hit": _duration(),
                    "cache_miss": _duration(),
                },
                "batch_stats": [],
                "memory_usage": [],
            }
        )
    return stats
