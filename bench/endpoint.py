"""Section `endpoint`: the model-test endpoint end to end, over HTTP, against a one-file FastAPI server.

1. Baseline: `bench/baseline_server.py` (FastAPI + onnxruntime, tutorial style) under uvicorn on a free loopback
   port, serving the ONNX iris random forest at `POST /predict`.
2. modelserve: `modelserve up` (fresh data directory, free port, admin key set through `MODELSERVE_ADMIN_KEY`),
   the same ONNX file uploaded as model `iris-rf`, then `POST /api/v1/models/iris-rf/versions/1/test` with
   `{"inputs": {"X": [...]}}`: gateway -> pool inference replica, two hops.

Both are driven by the same load generator (`bench.loadgen`, aiohttp's client, its own process) with single-record
bodies, at concurrency 1 and 16, for a fixed duration after a warm-up. One server runs at a time. Reported: req/s,
p50 and p99; ratio = modelserve / baseline. No target is set (rows are `info`). Every process started here is
stopped at the end, whatever happens; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import INFO, REPO_ROOT, Budget, ModelFiles, Row, SectionResult

HOST = "127.0.0.1"
CONCURRENCY = (1, 16)
IRIS = [5.1, 3.5, 1.4, 0.2]
MODEL_NAME = "iris-rf"
_KEY_IN_LOG = re.compile(r"admin API key \(shown once, store it now\): (msk_\S+)")


class EndpointError(RuntimeError):
    """A server did not start, refused the setup calls, or the load run failed."""


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM `process` (both servers shut down cleanly on it), SIGKILL it if it lingers, then any descendant of
    it still alive (by pid: only processes this section started)."""
    if process.poll() is not None:
        return
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
    for child in descendants:
        try:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                child.kill()
        except psutil.Error:
            pass


@contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` started with its output in `log`; always stopped when the block ends."""
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        try:
            yield process
        finally:
            stop_process(process)


def _clean_env() -> dict[str, str]:
    # Settings of the caller's own modelserve must not leak into the servers started here.
    return {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}


@contextmanager
def uvicorn_server(app: str, env: dict[str, str], log: Path, what: str, timeout: float = 60) -> Iterator[str]:
    """A one-file baseline app (`module:app`) under uvicorn on a free port; yields its base URL once /health answers."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port)]
    argv += ["--no-access-log", "--log-level", "warning"]
    url = f"http://{HOST}:{port}"
    with _process(argv, log, {**_clean_env(), **env}) as process:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise EndpointError(f"{what} exited early:\n{_tail(log)}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise EndpointError(f"{what} was not ready in time:\n{_tail(log)}")
            time.sleep(0.2)
        yield url


def baseline_server(model: Path, log: Path) -> Any:
    """The one-file FastAPI + onnxruntime server on a free port; yields its base URL."""
    return uvicorn_server("bench.baseline_server:app", {"BASELINE_MODEL_PATH": str(model)}, log, "the baseline server")


@dataclass
class Platform:
    url: str
    admin_key: str
    log: Path
    pid: int = 0
    """The `modelserve up` process."""


@contextmanager
def modelserve_platform(data_dir: Path, log: Path, extra_env: dict[str, str] | None = None) -> Iterator[Platform]:
    """`modelserve up` on a free port over a fresh data directory (as `tests/e2e` starts it); yields its URL/key."""
    port = free_port()
    admin_key = "msk_bench_" + secrets.token_hex(24)
    argv = [sys.executable, "-m", "modelserve.server", "up", "--port", str(port), "--data-dir", str(data_dir)]
    env = {**_clean_env(), "MODELSERVE_ADMIN_KEY": admin_key, "MODELSERVE_LOG_JSON": "true", **(extra_env or {})}
    if os.environ.get("BENCH_GATEWAY_WORKERS"):  # `--gateway-workers N`: the platform's gateway processes
        env["MODELSERVE_GATEWAY_WORKERS"] = os.environ["BENCH_GATEWAY_WORKERS"]
    with _process(argv, log, env) as process:
        deadline = time.monotonic() + 120
        while "modelserve is ready" not in _tail(log, 1_000_000):
            if process.poll() is not None:
                raise EndpointError(f"modelserve up exited early (status {process.returncode}):\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise EndpointError(f"modelserve up was not ready in 120 s:\n{_tail(log)}")
            time.sleep(0.2)
        printed = _KEY_IN_LOG.search(_tail(log, 1_000_000))
        yield Platform(f"http://{HOST}:{port}", printed.group(1) if printed else admin_key, log, process.pid)


def _upload_and_check(platform: Platform, model: Path) -> dict[str, Any]:
    """Upload `model` as `iris-rf` and make one test call (which also loads it into the pool replica)."""
    headers = {"Authorization": f"Bearer {platform.admin_key}"}
    with httpx.Client(base_url=platform.url, headers=headers, timeout=120) as client:
        upload = client.post(
            "/api/v1/models",
            data={"name": MODEL_NAME},
            files={"file": (model.name, model.read_bytes(), "application/octet-stream")},
        )
        if upload.status_code != 201:
            raise EndpointError(f"POST /api/v1/models answered {upload.status_code}: {upload.text[:2000]}")
        test = client.post(f"/api/v1/models/{MODEL_NAME}/versions/1/test", json={"inputs": {"X": IRIS}})
        if test.status_code != 200:
            raise EndpointError(
                f"POST /api/v1/models/{MODEL_NAME}/versions/1/test answered {test.status_code}: {test.text[:2000]}"
            )
        answer: dict[str, Any] = test.json()
        if answer.get("predictions", [{}])[0].get("label") != 0:
            raise EndpointError(f"unexpected model-test answer: {test.text[:2000]}")
        return {"upload": upload.json(), "test": answer}


def run_load(
    url: str, body: dict[str, Any], headers: dict[str, str], concurrency: int, budget: Budget
) -> dict[str, Any]:
    """One closed-loop load run from a separate process: `wrk` when installed (see `bench.wrk`), else
    `python -m bench.loadgen`; its JSON result."""
    from bench import wrk

    if wrk.available():
        try:
            result = wrk.run_wrk(url, body, headers, concurrency, budget.load_duration_s, budget.load_warmup_s)
        except (RuntimeError, subprocess.TimeoutExpired, httpx.HTTPError) as exc:
            raise EndpointError(f"wrk failed at concurrency {concurrency}: {exc}") from exc
        if not result["requests"]:
            raise EndpointError(f"no successful request at concurrency {concurrency}: {result.get('first_error')}")
        return result
    argv = [sys.executable, "-m", "bench.loadgen", "--url", url, "--body", json.dumps(body)]
    argv += ["--concurrency", str(concurrency), "--duration", str(budget.load_duration_s)]
    argv += ["--warmup", str(budget.load_warmup_s)]
    env = {**_clean_env(), "LOADGEN_HEADERS": json.dumps(headers)}
    timeout = budget.load_duration_s + budget.load_warmup_s + 60
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout, check=False)
    if done.returncode != 0:
        raise EndpointError(f"load generator failed ({done.returncode}): {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if not result["requests"]:
        raise EndpointError(f"no successful request at concurrency {concurrency}: {result.get('first_error')}")
    return result


_MEASURES = (("throughput", "req/s", "rps"), ("p50 latency", "ms", "p50_ms"), ("p99 latency", "ms", "p99_ms"))


def _rows(modelserve: dict[int, dict[str, Any]], baseline: dict[int, dict[str, Any]]) -> list[Row]:
    rows = []
    for concurrency in CONCURRENCY:
        ours, theirs = modelserve.get(concurrency, {}), baseline.get(concurrency, {})
        subject = f"concurrency {concurrency}"
        details = {"modelserve": ours, "baseline": theirs}
        for what, unit, key in _MEASURES:
            label = f"model test, 1 record, {what}"
            rows.append(Row(subject, label, unit, ours.get(key), "FastAPI", theirs.get(key), INFO, details))
    return rows


def run(files: ModelFiles, budget: Budget, work_dir: Path) -> SectionResult:
    """Baseline first, then modelserve, each at every concurrency; servers stopped whatever happens."""
    model = files.onnx("random_forest")
    result = SectionResult(
        key="endpoint",
        title=f"Model test endpoint end to end: modelserve (gateway -> pool replica) vs one-file FastAPI "
        f"(closed loop, {budget.load_duration_s:g} s per run)",
        baseline_header="baseline",
    )
    baseline: dict[int, dict[str, Any]] = {}
    modelserve: dict[int, dict[str, Any]] = {}
    logs = {"baseline": work_dir / "baseline-server.log", "modelserve": work_dir / "modelserve-up.log"}
    try:
        with baseline_server(model, logs["baseline"]) as url:
            for concurrency in CONCURRENCY:
                baseline[concurrency] = run_load(f"{url}/predict", {"X": IRIS}, {}, concurrency, budget)
        with modelserve_platform(work_dir / "modelserve-data", logs["modelserve"]) as platform:
            setup = _upload_and_check(platform, model)
            result.meta["model_test_answer"] = setup["test"]
            url = f"{platform.url}/api/v1/models/{MODEL_NAME}/versions/1/test"
            headers = {"Authorization": f"Bearer {platform.admin_key}"}
            for concurrency in CONCURRENCY:
                modelserve[concurrency] = run_load(url, {"inputs": {"X": IRIS}}, headers, concurrency, budget)
    except EndpointError as exc:
        result.error = str(exc)
    result.rows = _rows(modelserve, baseline)
    errors = {f"{who} c={c}": r["errors"] for who, runs in (("modelserve", modelserve), ("baseline", baseline))
              for c, r in runs.items() if r["errors"]}  # fmt: skip
    if errors:
        result.notes.append(f"non-200 answers (not counted in the figures): {errors}")
    result.notes += [
        "Ratio = modelserve / baseline: above 1 is more req/s but a longer latency.",
        "The load generator runs in its own process on the same 2 cores as the servers; one server runs at a "
        "time. The baseline has no auth, no validation beyond pydantic and no second hop.",
    ]
    result.meta.update(
        {
            "concurrency": list(CONCURRENCY),
            "duration_s": budget.load_duration_s,
            "warmup_s": budget.load_warmup_s,
            "modelserve": modelserve,
            "baseline": baseline,
        }
    )
    return result
