"""Section `v2`: one 10,000-row FP32 batch through the Open Inference Protocol, per transport, vs bare onnxruntime.

`modelserve up` with its gRPC server on, the ONNX iris random forest deployed as one service (1 replica); the
same `float32[10000, 4]` array sent by the real clients a Triton user has, with their defaults:

- `tritonclient.http`, JSON tensors (`binary_data=False` on the input and on every output);
- `tritonclient.http`, the binary tensor data extension (its default);
- `tritonclient.grpc` (`raw_input_contents` / `raw_output_contents`, its default);
- the bare call: `onnxruntime.InferenceSession.run` on the same array, in this process.

Cases interleave round by round (`bench.common.measure`); rows/s at the median call. Targets (issue 12):
binary and gRPC ≥ 0.5× bare; JSON is reported for information.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import (
    BATCH_ROWS,
    INFO,
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
from bench.endpoint import EndpointError, modelserve_platform
from bench.services import deploy_service, upload_model

SERVICE = "iris-v2"
TARGET = Target("min", 0.5)


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
    result.notes += [
        "Ratio = modelserve / bare: the V2 path adds the client's encoding, auth, the gateway's decoding into "
        "records, the hop to the replica (JSON) and the encoding back.",
        "Each transport's answer was checked equal to onnxruntime's before timing.",
    ]
    result.meta.update({"rows": BATCH_ROWS, "grpc_port": grpc_port})
    return result
