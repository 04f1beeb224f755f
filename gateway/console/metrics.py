"""One service's counters from the platform's own `/metrics`, for the service page's live charts.

The page polls these cumulative figures; its script turns two samples into a request rate, an error rate
and latency quantiles over the interval (from the histogram buckets' deltas), as Prometheus' rate() would.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "modelserve_service_requests"
LATENCY = "modelserve_service_request_duration_seconds"


def service_figures(text: str, service: str) -> dict[str, Any]:
    """`{requests, errors, buckets: [[le, count], ...]}` of `service` (cumulative, all processes)."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (REQUESTS, LATENCY):
            continue
        for sample in family.samples:
            if sample.labels.get("service") != service:
                continue
            if sample.name == REQUESTS + "_total":
                requests += sample.value
                if str(sample.labels.get("status", ""))[:1] in ("4", "5"):  # refused or failed
                    errors += sample.value
            elif sample.name == LATENCY + "_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    ordered = [[le if math.isfinite(le) else None, count] for le, count in sorted(buckets.items())]
    return {"service": service, "requests": requests, "errors": errors, "buckets": ordered}
