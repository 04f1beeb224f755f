"""Section `services`: fast-return predict through the gateway, against one-file servers, end to end over HTTP.

1. Baselines, started in the same run, one at a time, under uvicorn on free loopback ports: (a)
   `bench/baseline_server.py` (FastAPI + onnxruntime) with the ONNX iris random forest, (b)
   `bench/baseline_pmml_server.py` (FastAPI + pypmml, `Model.load` once, `model.predict(dict)` per request) with
   the sklearn2pmml iris random forest.
2. modelserve: `modelserve up` (fresh data directory), both files uploaded, one service each (`iris-onnx`,
   `iris-pmml`, 1 replica), polled until `running`; then `POST /api/v1/services/{name}/predict` with
   `{"inputs": {...}}` (one record). Last, `iris-onnx` is scaled to 2 replicas and measured again (info rows).

All load comes from `bench.loadgen` (aiohttp, its own process), closed loop, concurrency 1 and 32, one server or
service at a time. Targets (issue 5): at c32 modelserve ONNX req/s ≥ 1.0× (a), modelserve PMML req/s ≥ 10× (b);
at c1 modelserve ONNX p50 ≤ 2× (a)'s p50. Every process started here is stopped at the end; loopback only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import INFO, Budget, ModelFiles, Row, SectionResult, Target, iris_rows
from bench.endpoint import (
    IRIS,
    EndpointError,
    Platform,
    baseline_server,
    modelserve_platform,
    run_load,
    uvicorn_server,
)

CONCURRENCY = (1, 32)
ONNX_SERVICE = "iris-onnx"
PMML_SERVICE = "iris-pmml"
SERVICE_READY_S = 120.0


def pmml_baseline_server(model: Path, log: Path) -> Any:
    """`bench/baseline_pmml_server.py` on a free port; yields its base URL."""
    env = {"BASELINE_PMML_PATH": str(model)}
    return uvicorn_server("bench.baseline_pmml_server:app", env, log, "the pypmml baseline server", timeout=120)


def upload_model(client: httpx.Client, name: str, model: Path) -> dict[str, Any]:
    """Upload `model` as version 1 of model `name`."""
    upload = client.post(
        "/api/v1/models",
        data={"name": name},
        files={"file": (model.name, model.read_bytes(), "application/octet-stream")},
    )
    if upload.status_code != 201:
        raise EndpointError(f"POST /api/v1/models ({name}) answered {upload.status_code}: {upload.text[:2000]}")
    answer: dict[str, Any] = upload.json()
    return answer


def wait_running(client: httpx.Client, name: str, replicas: int, timeout: float = SERVICE_READY_S) -> dict[str, Any]:
    """Poll `GET /api/v1/services/{name}` until it is `running` with `replicas` ready replicas."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        answer = client.get(f"/api/v1/services/{name}")
        if answer.status_code == 200:
            last = answer.json()
            if last.get("status") == "running" and last.get("ready_replicas") == replicas:
                return last
            if last.get("status") == "failed":
                raise EndpointError(f"service {name} failed: {last.get('reason')}")
        time.sleep(0.25)
    raise EndpointError(f"service {name} not running with {replicas} replicas in {timeout:g} s: {last}")


def deploy_service(client: httpx.Client, name: str, model: str, replicas: int = 1) -> dict[str, Any]:
    """Create service `name` on version 1 of `model`; return it once `running`."""
    created = client.post("/api/v1/services", json={"name": name, "model": model, "version": 1, "replicas": replicas})
    if created.status_code != 201:
        raise EndpointError(f"POST /api/v1/services ({name}) answered {created.status_code}: {created.text[:2000]}")
    return wait_running(client, name, replicas)


def scale_service(client: httpx.Client, name: str, replicas: int) -> dict[str, Any]:
    patched = client.patch(f"/api/v1/services/{name}", json={"replicas": replicas})
    if patched.status_code != 200:
        raise EndpointError(f"PATCH /api/v1/services/{name} answered {patched.status_code}: {patched.text[:2000]}")
    return wait_running(client, name, replicas)


def _check_predict(client: httpx.Client, name: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post(f"/api/v1/services/{name}/predict", json=body)
    if answer.status_code != 200:
        raise EndpointError(f"predict on {name} answered {answer.status_code}: {answer.text[:2000]}")
    result: dict[str, Any] = answer.json()
    return result


_MEASURES = (("throughput", "req/s", "rps"), ("p50 latency", "ms", "p50_ms"), ("p99 latency", "ms", "p99_ms"))
ONNX_C32_RPS = Target("min", 1.0)
PMML_C32_RPS = Target("min", 10.0)
ONNX_C1_P50 = Target("max", 2.0)


def _target(kind: str, concurrency: int, key: str) -> Target:
    if kind == "onnx" and concurrency == 32 and key == "rps":
        return ONNX_C32_RPS
    if kind == "pmml" and concurrency == 32 and key == "rps":
        return PMML_C32_RPS
    if kind == "onnx" and concurrency == 1 and key == "p50_ms":
        return ONNX_C1_P50
    return INFO


def _rows(
    label: str, kind: str, baseline_name: str, ours: dict[int, dict[str, Any]], theirs: dict[int, dict[str, Any]]
) -> list[Row]:
    rows = []
    for concurrency in CONCURRENCY:
        if concurrency not in ours:
            continue
        mine, base = ours[concurrency], theirs.get(concurrency, {})
        details = {"modelserve": mine, "baseline": base}
        for what, unit, key in _MEASURES:
            target = INFO if "2 replicas" in label else _target(kind, concurrency, key)
            rows.append(
                Row(f"{label}, c{concurrency}", f"services predict, 1 record, {what}", unit, mine.get(key),
                    baseline_name, base.get(key), target, details)
            )  # fmt: skip
    return rows


def run(files: ModelFiles, budget: Budget, work_dir: Path) -> SectionResult:
    """Baselines (a) and (b) first, then modelserve's two services; every server stopped whatever happens."""
    onnx_model = files.onnx("random_forest")
    pmml_model = files.pmml("random_forest")
    pmml_record = iris_rows(1)[0]
    result = SectionResult(
        key="services",
        title=f"Services fast return end to end: gateway -> service replica vs one-file FastAPI servers "
        f"(closed loop, {budget.load_duration_s:g} s per run)",
    )
    runs: dict[str, dict[int, dict[str, Any]]] = {
        name: {} for name in ("baseline_onnx", "baseline_pmml", "onnx", "pmml", "onnx_2_replicas")
    }
    logs = {
        "baseline_onnx": work_dir / "services-baseline-onnx.log",
        "baseline_pmml": work_dir / "services-baseline-pmml.log",
        "modelserve": work_dir / "services-modelserve-up.log",
    }
    try:
        with baseline_server(onnx_model, logs["baseline_onnx"]) as url:
            for concurrency in CONCURRENCY:
                runs["baseline_onnx"][concurrency] = run_load(f"{url}/predict", {"X": IRIS}, {}, concurrency, budget)
        with pmml_baseline_server(pmml_model, logs["baseline_pmml"]) as url:
            sample = httpx.post(f"{url}/predict", json=pmml_record, timeout=60)
            result.meta["baseline_pmml_answer"] = sample.json() if sample.status_code == 200 else sample.text[:2000]
            for concurrency in CONCURRENCY:
                runs["baseline_pmml"][concurrency] = run_load(f"{url}/predict", pmml_record, {}, concurrency, budget)
        with modelserve_platform(work_dir / "services-data", logs["modelserve"]) as platform:
            _modelserve_runs(platform, onnx_model, pmml_model, pmml_record, budget, runs, result)
    except EndpointError as exc:
        result.error = str(exc)
    onnx_rows = _rows("ONNX iris RF, 1 replica", "onnx", "FastAPI+onnxruntime", runs["onnx"], runs["baseline_onnx"])
    pmml_rows = _rows("PMML iris RF, 1 replica", "pmml", "FastAPI+pypmml", runs["pmml"], runs["baseline_pmml"])
    two = _rows("ONNX iris RF, 2 replicas", "onnx", "FastAPI+onnxruntime", runs["onnx_2_replicas"],
                runs["baseline_onnx"])  # fmt: skip
    result.rows = onnx_rows + pmml_rows + two
    errors = {f"{who} c={c}": r["errors"] for who, by_c in runs.items() for c, r in by_c.items() if r["errors"]}
    if errors:
        result.notes.append(f"non-200 answers (not counted in the figures): {errors}")
    result.notes += [
        "Ratio = modelserve / baseline: above 1 is more req/s but a longer latency.",
        "One server or service is loaded at a time; the load generator shares the machine's cores with it. "
        "The baselines have no auth, no validation and no second hop.",
    ]
    result.meta.update(
        {"concurrency": list(CONCURRENCY), "duration_s": budget.load_duration_s, "warmup_s": budget.load_warmup_s,
         "runs": runs}
    )  # fmt: skip
    return result


def _modelserve_runs(
    platform: Platform,
    onnx_model: Path,
    pmml_model: Path,
    pmml_record: dict[str, float],
    budget: Budget,
    runs: dict[str, dict[int, dict[str, Any]]],
    result: SectionResult,
) -> None:
    headers = {"Authorization": f"Bearer {platform.admin_key}"}
    onnx_body = {"inputs": {"X": IRIS}}
    pmml_body = {"inputs": pmml_record}
    with httpx.Client(base_url=platform.url, headers=headers, timeout=120) as client:
        upload_model(client, ONNX_SERVICE, onnx_model)
        upload_model(client, PMML_SERVICE, pmml_model)
        deploy_service(client, ONNX_SERVICE, ONNX_SERVICE)
        deploy_service(client, PMML_SERVICE, PMML_SERVICE)
        result.meta["predict_answers"] = {
            ONNX_SERVICE: _check_predict(client, ONNX_SERVICE, onnx_body),
            PMML_SERVICE: _check_predict(client, PMML_SERVICE, pmml_body),
        }
        for name, body, key in ((ONNX_SERVICE, onnx_body, "onnx"), (PMML_SERVICE, pmml_body, "pmml")):
            url = f"{platform.url}/api/v1/services/{name}/predict"
            for concurrency in CONCURRENCY:
                runs[key][concurrency] = run_load(url, body, headers, concurrency, budget)
        result.meta["service_two_replicas"] = scale_service(client, ONNX_SERVICE, 2)
        url = f"{platform.url}/api/v1/services/{ONNX_SERVICE}/predict"
        for concurrency in CONCURRENCY:
            runs["onnx_2_replicas"][concurrency] = run_load(url, onnx_body, headers, concurrency, budget)
