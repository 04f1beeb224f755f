"""Section `v2`: one 10,000-row FP32 batch through the Open Inference Protocol, per transport, vs bare onnxruntime.

`modelserve up` with its gRPC server on, the ONNX iris random forest deployed as one service (1 replica); the
same `float32[10000, 4]` array sent by the real clients a Triton user has, with their defaults:

- `tritonclient.http`, JSON tensors (`binary_data=False` on the input and on every output);
- `tritonclient.http`, the binary tensor data extension (its default);
- `tritonclient.grpc` (`raw_input_contents` / `raw_output_contents`, its default);
- the bare call: `onnxruntime.InferenceSession.run` on the same array, in this process.

Cases interleave round by round (`bench.common.measure`); rows/s at the median call. Targets (issue 12):
binary and gRPC ≥ 0.5× bare; JSON is reported for information.

Then one record per call at concurrency 32, closed loop from a separate process: gRPC `ModelInfer` (this
module's `--grpc-load`, grpc.aio) against the REST fast return `POST /api/v1/services/{name}/predict`
(`bench.endpoint.run_load`). Target: gRPC req/s ≥ 1.0× the fast return.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import (
    BATCH_ROWS,
    INFO,
    REPO_ROOT,
    Budget,
    Case,
    ModelFiles,
    Row,
    SectionResult,
    Target,
    measure,
    onnx_rows,
    run_async,
    throughputs,
)
from bench.endpoint import IRIS, EndpointError, modelserve_platform, run_load
from bench.services import deploy_service, upload_model

SERVICE = "iris-v2"
TARGET = Target("min", 0.5)
CONCURRENCY = 32


def run(files: ModelFiles, budget: Budget, work_dir: Path) -> SectionResult:
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from tests.conftest import free_port

    model = files.onnx("random_forest")
    batch = np.asarray([r["X"] for r in onnx_rows(BATCH_ROWS)], dtype=np.float32)
    result = SectionResult(
        key="v2",
        title=f"V2 inference of one {BATCH_ROWS:,}-row FP32 batch per transport vs onnxruntime's bare call",
        value_header="modelserve V2",
        baseline_header="bare onnxruntime",
    )
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    expected = session.run(None, {input_name: batch})[0].tolist()
    grpc_port = free_port()
    try:
        with modelserve_platform(
            work_dir / "v2-data", work_dir / "v2-modelserve-up.log", {"MODELSERVE_GRPC_PORT": str(grpc_port)}
        ) as platform:
            auth = {"Authorization": f"Bearer {platform.admin_key}"}
            with httpx.Client(base_url=platform.url, headers=auth, timeout=120) as client:
                upload_model(client, SERVICE, model)
                deploy_service(client, SERVICE, SERVICE)
            http = httpclient.InferenceServerClient(
                platform.url.removeprefix("http://"), network_timeout=300, connection_timeout=60
            )
            grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            grpc_auth = {"authorization": auth["Authorization"]}

            def http_call(binary: bool) -> Any:
                tensor = httpclient.InferInput("X", list(batch.shape), "FP32")
                tensor.set_data_from_numpy(batch, binary_data=binary)
                outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
                return http.infer(SERVICE, [tensor], outputs=outputs, headers=dict(auth)).as_numpy("label")

            def grpc_call() -> Any:
                tensor = grpcclient.InferInput("X", list(batch.shape), "FP32")
                tensor.set_data_from_numpy(batch)
                return grpc.infer(SERVICE, [tensor], headers=dict(grpc_auth)).as_numpy("label")

            cases = {
                "json": lambda: http_call(False),
                "binary": lambda: http_call(True),
                "grpc": grpc_call,
                "bare": lambda: session.run(None, {input_name: batch})[0],
            }
            for name, call in cases.items():  # every transport answers what onnxruntime answers
                if np.asarray(call()).tolist() != expected:
                    raise EndpointError(f"the {name} answer differs from onnxruntime's")
            samples = run_async(
                measure([Case(n, c) for n, c in cases.items()], rounds=budget.batch_rounds, calls=3, budget=budget)
            )
            http.close()
            grpc.close()
            rest_load = run_load(f"{platform.url}/api/v1/services/{SERVICE}/predict", {"inputs": {"X": IRIS}}, auth,
                                 CONCURRENCY, budget)  # fmt: skip
            grpc_load = _run_grpc_load(f"127.0.0.1:{grpc_port}", auth["Authorization"], budget)
    except EndpointError as exc:
        result.error = str(exc)
        return result
    figures = throughputs(samples, BATCH_ROWS)
    bare = figures["bare"]["rows_per_s"]
    labels = {
        "json": ("tritonclient.http, JSON tensors", INFO),
        "binary": ("tritonclient.http, binary tensor data", TARGET),
        "grpc": ("tritonclient.grpc, raw contents", TARGET),
    }
    result.rows = [
        Row(
            "ONNX iris RF, 1 replica",
            f"{what}, {BATCH_ROWS:,} rows",
            "rows/s",
            figures[key]["rows_per_s"],
            "InferenceSession.run",
            bare,
            target,
            figures[key] | {"bare": figures["bare"]},
        )
        for key, (what, target) in labels.items()
    ]
    result.rows.append(
        Row("ONNX iris RF, 1 replica", f"gRPC ModelInfer, 1 record, c={CONCURRENCY}", "req/s", grpc_load["rps"],
            "REST fast return, same load", rest_load["rps"], Target("min", 1.0), {"grpc": grpc_load, "rest": rest_load})
    )  # fmt: skip
    result.notes += [
        "Ratio = modelserve / bare: the V2 path adds the client's encoding, auth, the gateway's decoding into "
        "records, the hop to the replica (JSON) and the encoding back.",
        "Each transport's answer was checked equal to onnxruntime's before timing.",
    ]
    result.meta.update({"rows": BATCH_ROWS, "grpc_port": grpc_port})
    return result


def _run_grpc_load(target: str, authorization: str, budget: Budget) -> dict[str, Any]:
    """`--grpc-load` in its own process (as `bench.loadgen` is for HTTP); its JSON result."""
    argv = [sys.executable, "-m", "bench.v2_transports", "--grpc-load", target, "--concurrency", str(CONCURRENCY)]
    argv += ["--duration", str(budget.load_duration_s), "--warmup", str(budget.load_warmup_s)]
    env = {**os.environ, "BENCH_AUTHORIZATION": authorization}
    timeout = budget.load_duration_s + budget.load_warmup_s + 60
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout, check=False)
    if done.returncode != 0:
        raise EndpointError(f"gRPC load generator failed ({done.returncode}): {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    if not result["requests"]:
        raise EndpointError(f"no successful gRPC request: {result.get('first_error')}")
    return result


async def _grpc_load(target: str, concurrency: int, duration: float, warmup: float) -> dict[str, Any]:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name=SERVICE)
    request.inputs.add(name="X", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.asarray([IRIS], dtype=np.float32).tobytes())
    metadata = (("authorization", os.environ["BENCH_AUTHORIZATION"]),)
    latencies: list[float] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        start = time.perf_counter()
        measure_from, end = start + warmup, start + warmup + duration

        async def client() -> None:
            while (now := time.perf_counter()) < end:
                try:
                    await stub.ModelInfer(request, metadata=metadata)
                except grpc.aio.AioRpcError as exc:
                    errors.append(str(exc.code()))
                    continue
                if now >= measure_from:
                    latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    latencies.sort()
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3) if latencies else None
    return {
        "requests": len(latencies),
        "rps": len(latencies) / duration,
        "p50_ms": pick(0.5) if pick else None,
        "p99_ms": pick(0.99) if pick else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.v2_transports")
    parser.add_argument("--grpc-load", required=True, help="host:port of the gRPC server")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_grpc_load(args.grpc_load, args.concurrency, args.duration, args.warmup))))
