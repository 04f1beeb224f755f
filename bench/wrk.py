"""Closed-loop load from `wrk` (C, Debian's package), the load generator the services issue names.

On a 2-core machine the load generator shares the cores with what it measures: aiohttp's client
(`bench.loadgen`) spends about as much CPU per request as the server it drives, wrk a small fraction of it,
so with wrk the figures say more about the servers. `run_wrk` gives the same JSON shape as `bench.loadgen`
(requests, errors, rps, p50/p90/p99/mean/max ms, first_error, sample_response) plus `load_generator: "wrk"`.

The request (method, body, headers, API key included) goes to wrk in a Lua script written to a private
temporary file, never on a command line; wrk's `done` hook prints the figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"completed": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
    .. '"p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, "mean_us": %.1f, "max_us": %.1f}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


def available() -> bool:
    """wrk is on PATH and not turned off with `BENCH_LOADGEN=python`."""
    return os.environ.get("BENCH_LOADGEN", "wrk") == "wrk" and shutil.which("wrk") is not None


def _lua_string(text: str) -> str:
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    return f"[{'=' * level}[{text}]{'=' * level}]"


def _script(body: bytes, headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    for name, value in {"Content-Type": "application/json", **headers}.items():
        lines.append(f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}")
    return "\n".join(lines) + "\n" + _DONE


def _run(url: str, script: Path, concurrency: int, seconds: float, timeout: float) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s"]
    argv += ["-s", str(script), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no figures: {done.stdout[-2000:]}")
    return dict(json.loads(line))


def run_wrk(
    url: str, body: dict[str, Any], headers: dict[str, str], concurrency: int, duration: float, warmup: float
) -> dict[str, Any]:
    """Warm up for `warmup` s (not counted), then measure `duration` s at `concurrency` connections."""
    if urlsplit(url).hostname not in LOOPBACK:
        raise ValueError(f"refusing a non-loopback target: {url}")
    raw = json.dumps(body).encode()
    sample = httpx.post(url, content=raw, headers={"Content-Type": "application/json", **headers}, timeout=30)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        script = Path(folder) / "request.lua"
        script.touch(mode=0o600)
        script.write_text(_script(raw, headers))
        if warmup > 0:
            _run(url, script, concurrency, warmup, warmup + 60)
        figures = _run(url, script, concurrency, duration, duration + 60)
    errors = sum(int(figures[k]) for k in ("connect", "read", "write", "status", "timeout"))
    completed = int(figures["completed"]) - int(figures["status"])  # non-2xx/3xx answers are errors
    seconds = int(figures["duration_us"]) / 1e6
    return {
        "url": url,
        "concurrency": concurrency,
        "duration_s": seconds,
        "warmup_s": warmup,
        "requests": completed,
        "errors": errors,
        "rps": completed / seconds if seconds else 0.0,
        "first_error": None if sample.status_code < 400 else f"HTTP {sample.status_code}: {sample.text[:300]}",
        "sample_response": sample.text[:500],
        "p50_ms": figures["p50_us"] / 1e3,
        "p90_ms": figures["p90_us"] / 1e3,
        "p99_ms": figures["p99_us"] / 1e3,
        "mean_ms": figures["mean_us"] / 1e3,
        "max_ms": figures["max_us"] / 1e3,
        "load_generator": "wrk",
    }
