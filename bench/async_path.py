"""Section `async`: wait return end to end (submit, then poll until the result), against one RQ job per request.

1. One Redis started here (`shared.redis_server.redis_server_argv`: loopback, the embedded default's settings),
   used by both sides in turn.
2. Baseline: the plain design, one RQ job per request. `baseline_predict(record)` below (the ONNX iris random
   forest, its `InferenceSession` loaded once per process in a module global) enqueued once per request on the
   queue `bench-baseline` with RQ's JSON serializer, run by 2 `rq` `SimpleWorker` processes started here. The
   load process enqueues, then polls `job.get_status()` on the gateway's long-poll cadence (10 ms, ×1.5, at
   most 100 ms) and reads the return value.
3. modelserve: `modelserve up` with `MODELSERVE_REDIS_URL` pointing at that Redis and an internal token and
   admin key set here; the ONNX model uploaded and deployed as service `iris-onnx` (1 replica; the async path
   does not use it, but jobs are submitted to a service); a second `modelserve worker` started with the
   environment of the platform's own worker (read with psutil), so 2 workers. The load process submits
   `POST /api/v1/services/iris-onnx/jobs` and long-polls `GET /api/v1/jobs/{id}?wait=10` until the job ends.

Both sides: N single-record jobs (5,000; 2,000 with --quick) from 64 concurrent clients in a separate process
(`python -m bench.async_path client …`), after 200 warm-up jobs not counted. Completed/s = jobs that succeeded /
(last result - first submit); latency = submit sent to final status received, per job. Target (issue 6): ≥ 1,000
completed predictions/s for modelserve; the ratio vs the baseline is reported. Loopback only; every process
started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BASELINE_QUEUE = "bench-baseline"
SERVICE = "iris-onnx"
CLIENTS = 64
JOBS = 5_000
QUICK_JOBS = 2_000
WARMUP_JOBS = 200
WORKERS = 2
CLIENT_DEADLINE_S = 240.0
TARGET_PER_S = 1_000.0
IRIS = [5.1, 3.5, 1.4, 0.2]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

# --- the baseline's RQ task (imported by the rq workers: keep this module's top level light) -----------------

_session: Any = None


def baseline_predict(record: dict[str, list[float]]) -> dict[str, Any]:
    """One prediction, the plain way: the ONNX session loaded once per worker process, then run on one record."""
    global _session
    import numpy as np

    if _session is None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        _session = ort.InferenceSession(os.environ["BASELINE_MODEL_PATH"], options, providers=["CPUExecutionProvider"])
    labels, probabilities = _session.run(None, {"X": np.array([record["X"]], dtype=np.float32)})
    return {"label": int(labels[0]), "probabilities": {str(k): float(v) for k, v in probabilities[0].items()}}


# --- the load process ----------------------------------------------------------------------------------------


def _summary(latencies: list[float], first: float, last: float, submitted: int, failed: int, errors: list[str],
             elapsed_cap: bool) -> dict[str, Any]:  # fmt: skip
    ordered = sorted(latencies)
    wall = max(last - first, 1e-9)
    result: dict[str, Any] = {
        "submitted": submitted,
        "succeeded": len(ordered),
        "failed": failed,
        "wall_s": wall,
        "completed_per_s": len(ordered) / wall,
        "first_errors": errors[:5],
        "hit_deadline": elapsed_cap,
    }
    if ordered:

        def pct(q: float) -> float:
            position = (len(ordered) - 1) * q / 100
            low = int(position)
            high = min(low + 1, len(ordered) - 1)
            return (ordered[low] + (ordered[high] - ordered[low]) * (position - low)) * 1e3

        result.update(p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99), mean_ms=statistics.fmean(ordered) * 1e3,
                      max_ms=ordered[-1] * 1e3)  # fmt: skip
    return result


async def _modelserve_load(base_url: str, headers: dict[str, str], count: int, clients: int) -> dict[str, Any]:
    import aiohttp

    perf = time.perf_counter
    latencies: list[float] = []
    errors: list[str] = []
    failed = 0
    next_index = 0
    body = json.dumps({"inputs": {"X": IRIS}}).encode()
    submit_url = f"{base_url}/api/v1/services/{SERVICE}/jobs"
    deadline = perf() + CLIENT_DEADLINE_S
    all_headers = {"content-type": "application/json", **headers}
    first = perf()
    last = first

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_index, failed, last
        while next_index < count and perf() < deadline:
            next_index += 1
            sent = perf()
            try:
                async with session.post(submit_url, data=body, headers=all_headers) as response:
                    accepted = await response.json(content_type=None)
                    if response.status != 202:
                        raise RuntimeError(f"submit HTTP {response.status}: {str(accepted)[:300]}")
                job_url = f"{base_url}{accepted['url']}?wait=10"
                while True:
                    async with session.get(job_url, headers=headers) as response:
                        state = await response.json(content_type=None)
                        if response.status != 200:
                            raise RuntimeError(f"poll HTTP {response.status}: {str(state)[:300]}")
                    if state.get("status") in ("succeeded", "failed", "cancelled"):
                        break
                    if perf() > deadline:
                        raise RuntimeError("deadline passed while polling")
                done = perf()
                if state["status"] == "succeeded":
                    latencies.append(done - sent)
                    last = max(last, done)
                else:
                    failed += 1
                    errors.append(str(state)[:300])
            except (TimeoutError, aiohttp.ClientError, RuntimeError, KeyError) as exc:
                failed += 1
                errors.append(f"{type(exc).__name__}: {exc}")

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        first = perf()
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return _summary(latencies, first, last, next_index, failed, errors, perf() >= deadline)


def _baseline_load(redis_url: str, count: int, clients: int) -> dict[str, Any]:
    from redis import Redis
    from rq import Queue
    from rq.job import JobStatus
    from rq.serializers import JSONSerializer

    connection = Redis.from_url(redis_url)
    queue = Queue(BASELINE_QUEUE, connection=connection, serializer=JSONSerializer)
    perf = time.perf_counter
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    counters = {"next": 0, "failed": 0}
    deadline = perf() + CLIENT_DEADLINE_S
    last = [0.0]

    def client() -> None:
        while True:
            with lock:
                if counters["next"] >= count or perf() >= deadline:
                    return
                counters["next"] += 1
            sent = perf()
            try:
                job = queue.enqueue("bench.async_path.baseline_predict", {"X": IRIS}, result_ttl=600)
                pause = 0.01
                while True:
                    status = job.get_status(refresh=True)
                    if status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                        break
                    if perf() > deadline:
                        raise RuntimeError("deadline passed while polling")
                    time.sleep(pause)
                    pause = min(pause * 1.5, 0.1)
                value = job.return_value(refresh=True) if status == JobStatus.FINISHED else None
                done = perf()
                with lock:
                    if status == JobStatus.FINISHED and value is not None:
                        latencies.append(done - sent)
                        last[0] = max(last[0], done)
                    else:
                        counters["failed"] += 1
                        errors.append(f"job {job.id} ended {status}")
            except Exception as exc:
                with lock:
                    counters["failed"] += 1
                    errors.append(f"{type(exc).__name__}: {exc}")

    first = perf()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CLIENT_DEADLINE_S + 30)
    return _summary(latencies, first, last[0] or first, counters["next"], counters["failed"], errors,
                    perf() >= deadline)  # fmt: skip


def client_main(argv: list[str] | None = None) -> int:
    """`python -m bench.async_path client --mode modelserve|baseline --target URL --count N --clients C`."""
    parser = argparse.ArgumentParser(prog="python -m bench.async_path client")
    parser.add_argument("--mode", choices=("modelserve", "baseline"), required=True)
    parser.add_argument("--target", required=True, help="gateway base URL, or the Redis URL for the baseline")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--clients", type=int, default=CLIENTS)
    args = parser.parse_args(argv)
    if urlsplit(args.target).hostname not in LOOPBACK:
        parser.error("loopback targets only")
    if args.mode == "baseline":
        result = _baseline_load(args.target, args.count, args.clients)
    else:
        headers = json.loads(os.environ.get("LOADGEN_HEADERS") or "{}")
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            run = asyncio.run
        result = run(_modelserve_load(args.target, headers, args.count, args.clients))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


# --- the section ---------------------------------------------------------------------------------------------


def _load(mode: str, target: str, count: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    from bench.common import REPO_ROOT
    from bench.endpoint import EndpointError, _clean_env

    argv = [sys.executable, "-m", "bench.async_path", "client", "--mode", mode, "--target", target]
    argv += ["--count", str(count), "--clients", str(CLIENTS)]
    env = {**_clean_env(), "LOADGEN_HEADERS": json.dumps(headers or {})}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=CLIENT_DEADLINE_S + 90, check=False)  # fmt: skip
    if done.returncode != 0:
        raise EndpointError(f"async load client ({mode}) failed ({done.returncode}): {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if not result["succeeded"]:
        raise EndpointError(f"no job succeeded ({mode}): {result['first_errors']}")
    return result


def _wait(predicate: Any, what: str, timeout: float, log: Path | None = None) -> None:
    from bench.endpoint import EndpointError, _tail

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise EndpointError(f"{what} not within {timeout:g} s" + (f":\n{_tail(log)}" if log else ""))
        time.sleep(0.2)


def _workers_on(redis_url: str, queue_name: str) -> int:
    from redis import Redis
    from rq import Queue, Worker

    with Redis.from_url(redis_url) as connection:
        return len(Worker.all(queue=Queue(queue_name, connection=connection)))


@contextmanager
def _redis(data_dir: Path, log: Path) -> Iterator[str]:
    from redis import Redis

    from bench.endpoint import _clean_env, _process, free_port
    from shared.redis_server import redis_server_argv

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with _process(redis_server_argv(data_dir, port), log, _clean_env()):

        def ping() -> bool:
            try:
                with Redis.from_url(url, socket_timeout=1) as connection:
                    return bool(connection.ping())
            except Exception:
                return False

        _wait(ping, "redis-server ready", 30, log)
        yield url


def _baseline(redis_url: str, model: Path, count: int, work_dir: Path) -> dict[str, Any]:
    from bench.endpoint import _clean_env, _process

    env = {**_clean_env(), "BASELINE_MODEL_PATH": str(model)}
    with ExitStack() as stack:
        for index in range(WORKERS):
            argv = [sys.executable, "-m", "rq.cli", "worker", "--worker-class", "rq.SimpleWorker",
                    "--serializer", "rq.serializers.JSONSerializer", "-u", redis_url, "--name",
                    f"bench-baseline-{index}-{secrets.token_hex(3)}", BASELINE_QUEUE]  # fmt: skip
            stack.enter_context(_process(argv, work_dir / f"async-rq-worker-{index}.log", env))
        _wait(lambda: _workers_on(redis_url, BASELINE_QUEUE) >= WORKERS, "2 rq workers registered", 60)
        _load("baseline", redis_url, WARMUP_JOBS)
        return _load("baseline", redis_url, count)


@contextmanager
def _platform(data_dir: Path, log: Path, redis_url: str) -> Iterator[tuple[Any, int]]:
    """`modelserve up` on our own Redis, with an internal token we know (the second worker needs it)."""
    from bench.endpoint import modelserve_platform

    extra = {"MODELSERVE_INTERNAL_TOKEN": secrets.token_urlsafe(32), "MODELSERVE_REDIS_URL": redis_url}
    with modelserve_platform(data_dir, log, extra) as platform:
        yield platform, platform.pid


def _platform_worker_env(up_pid: int) -> dict[str, str]:
    """The environment of the `modelserve worker` that `modelserve up` started (its registry URL, token, …)."""
    import psutil

    from bench.endpoint import EndpointError

    for child in psutil.Process(up_pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "modelserve.server" in cmdline and cmdline[-1] == "worker":
            env: dict[str, str] = child.environ()
            return env
    raise EndpointError("no `modelserve worker` child of `modelserve up` found")


def _modelserve(redis_url: str, model: Path, count: int, work_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    import httpx

    from bench.endpoint import _process
    from bench.services import deploy_service, upload_model
    from shared.redis import PREDICT_QUEUE

    log = work_dir / "async-modelserve-up.log"
    with _platform(work_dir / "async-data", log, redis_url) as (platform, up_pid):
        headers = {"Authorization": f"Bearer {platform.admin_key}"}
        with httpx.Client(base_url=platform.url, headers=headers, timeout=120) as client:
            upload_model(client, SERVICE, model)
            meta["service"] = deploy_service(client, SERVICE, SERVICE)
        env = _platform_worker_env(up_pid)
        argv = [sys.executable, "-m", "modelserve.server", "worker"]
        with _process(argv, work_dir / "async-second-worker.log", env):
            _wait(lambda: _workers_on(redis_url, PREDICT_QUEUE) >= WORKERS, "2 modelserve workers registered", 90)
            meta["modelserve_workers"] = _workers_on(redis_url, PREDICT_QUEUE)
            _load("modelserve", platform.url, WARMUP_JOBS, headers)
            return _load("modelserve", platform.url, count, headers)


def run(files: Any, budget: Any, work_dir: Path) -> Any:
    """Baseline first (2 rq workers), then modelserve (2 workers), same Redis, same N; all stopped at the end."""
    from bench.common import INFO, Row, SectionResult, Target
    from bench.endpoint import EndpointError

    quick = budget.load_duration_s < 5
    count = QUICK_JOBS if quick else JOBS
    model = files.onnx("random_forest")
    result = SectionResult(
        key="async",
        title=f"Wait return end to end: {count:,} single-record jobs, {CLIENTS} clients submit -> poll, "
        f"{WORKERS} workers, modelserve vs one RQ job per request",
    )
    baseline: dict[str, Any] = {}
    modelserve: dict[str, Any] = {}
    try:
        with _redis(work_dir / "async-redis", work_dir / "async-redis.log") as redis_url:
            baseline = _baseline(redis_url, model, count, work_dir)
            modelserve = _modelserve(redis_url, model, count, work_dir, result.meta)
    except EndpointError as exc:
        result.error = str(exc)
    details = {"modelserve": modelserve, "baseline": baseline}
    name = "RQ job per request"
    subject = f"ONNX iris RF, {WORKERS} workers"
    result.rows = [
        Row(subject, "completed predictions/s", "req/s", modelserve.get("completed_per_s"), name,
            baseline.get("completed_per_s"), INFO, details),
        Row(subject, "submit-to-result p50", "ms", modelserve.get("p50_ms"), name, baseline.get("p50_ms"), INFO,
            details),
        Row(subject, "submit-to-result p99", "ms", modelserve.get("p99_ms"), name, baseline.get("p99_ms"), INFO,
            details),
    ]  # fmt: skip
    result.rows.append(
        Row(subject, "completed/s vs the issue's target", "req/s", modelserve.get("completed_per_s"),
            "target", TARGET_PER_S, Target("min", 1.0), details)
    )  # fmt: skip
    for who, figures in (("modelserve", modelserve), ("baseline", baseline)):
        if figures.get("failed"):
            result.notes.append(f"{who}: {figures['failed']} jobs did not succeed, e.g. {figures['first_errors']}")
    result.notes += [
        "Ratio = modelserve / baseline: above 1 is more completed/s, or a longer latency. The last row's "
        f"'baseline' is the target itself (ratio = completed/s / {TARGET_PER_S:,.0f}).",
        f"Both sides use the same Redis (AOF everysec, loopback) and {CLIENTS} clients in one separate process; "
        f"{WARMUP_JOBS} warm-up jobs first, not counted. The baseline polls RQ directly (no HTTP), modelserve "
        "goes through the gateway (auth, HTTP, long poll).",
    ]
    result.meta.update({"jobs": count, "clients": CLIENTS, "workers": WORKERS, "modelserve": modelserve,
                        "baseline": baseline})  # fmt: skip
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        sys.exit(client_main(sys.argv[2:]))
    sys.exit("usage: python -m bench.async_path client --mode modelserve|baseline --target URL --count N")
