"""A closed-loop HTTP load generator on aiohttp's client, run in its own process by the endpoint section.

    python -m bench.loadgen --url http://127.0.0.1:8000/predict --body '{"X": [5.1, 3.5, 1.4, 0.2]}' \\
        --concurrency 16 --duration 5 --warmup 1 [--header "Authorization: Bearer …"]

`concurrency` workers share one keep-alive `ClientSession`; each sends the same JSON body, waits for the whole
answer, and sends again. Requests that complete during the warm-up are not counted; the measurement window is
the `duration` seconds after it. Headers may also come as a JSON object in the environment variable
`LOADGEN_HEADERS` (keeps secrets such as API keys off the command line).

Prints one JSON object on stdout: requests, errors, req/s and latency percentiles (ms) of the successful
requests in the window, and the first error seen.

Only loopback targets are accepted: this tool must never send traffic off the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class Tally:
    """What the workers saw inside the measurement window."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None
    sample: str | None = None


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    window: tuple[float, float],
    tally: Tally,
) -> None:
    start_window, end_window = window
    perf = time.perf_counter
    while True:
        sent = perf()
        if sent >= end_window:
            return
        ok, detail = False, ""
        try:
            async with session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
                ok = response.status == 200
                if not ok:
                    detail = f"HTTP {response.status}: {payload[:500].decode('utf-8', 'replace')}"
                elif tally.sample is None:
                    tally.sample = payload[:500].decode("utf-8", "replace")
        except (TimeoutError, aiohttp.ClientError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
        done = perf()
        if not start_window <= done <= end_window:
            continue  # completed during the warm-up, or after the window closed
        if ok:
            tally.latencies.append(done - sent)
        else:
            tally.errors += 1
            if tally.first_error is None:
                tally.first_error = detail


def _percentile(ordered: list[float], q: float) -> float:
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def generate(
    url: str, body: bytes, headers: dict[str, str], *, concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    """Drive `url` with `concurrency` closed-loop workers; return the window's figures."""
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    all_headers = {"content-type": "application/json", **headers}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + warmup
        window = (start, start + duration)
        await asyncio.gather(*(_worker(session, url, body, all_headers, window, tally) for _ in range(concurrency)))
    ordered = sorted(tally.latencies)
    result: dict[str, Any] = {
        "url": url,
        "concurrency": concurrency,
        "duration_s": duration,
        "warmup_s": warmup,
        "requests": len(ordered),
        "errors": tally.errors,
        "rps": len(ordered) / duration,
        "first_error": tally.first_error,
        "sample_response": tally.sample,
    }
    if ordered:
        result.update(
            p50_ms=_percentile(ordered, 50) * 1e3,
            p90_ms=_percentile(ordered, 90) * 1e3,
            p99_ms=_percentile(ordered, 99) * 1e3,
            mean_ms=statistics.fmean(ordered) * 1e3,
            max_ms=ordered[-1] * 1e3,
        )
    return result


def _headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, _, content = value.partition(":")
        headers[name.strip()] = content.strip()
    return headers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="JSON body sent with every request")
    parser.add_argument("--header", action="append", default=[], help='"Name: value" (repeatable)')
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the measurement window")
    args = parser.parse_args(argv)
    host = urlsplit(args.url).hostname
    if host not in LOOPBACK:
        parser.error(f"refusing to send load to {host!r}: loopback only")
    body = json.dumps(json.loads(args.body)).encode()
    headers = {**json.loads(os.environ.get("LOADGEN_HEADERS") or "{}"), **_headers(args.header)}
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    result = run(
        generate(
            args.url,
            body,
            headers,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
