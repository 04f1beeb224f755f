"""V2 at the gateway over both transports, in-process: REST binary/compressed and gRPC typed and raw contents.

The registry and the replica are outside the gateway process: small real HTTP servers on loopback. The
replica answers normalised predictions computed from what it received, so an answer proves the tensors
travelled intact.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from fastapi import FastAPI, Request
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.app import create_app as create_gateway
from shared.settings import Settings
from tests.conftest import LiveServer, asgi_client, free_port

ADMIN, SCOPED = "msk_admin_" + "a" * 30, "msk_scoped_" + "b" * 30
SIGNATURE: dict[str, Any] = {
    "format": "onnx",
    "function_type": "classification",
    "inputs": [{"name": "X", "data_type": "float", "shape": [None, 4]}],
    "outputs": [{"name": "output_label", "data_type": "int64", "shape": [None]}],
    "targets": [],
    "class_labels": [0, 1, 2],
}


def _replica() -> FastAPI:
    app = FastAPI()

    def answer(records: list[dict[str, Any]]) -> dict[str, Any]:
        # label = index of the largest feature: depends on every value sent
        predictions = [
            {"label": int(np.argmax(r["X"])), "probabilities": {"0": r["X"][0] / sum(r["X"]), "1": 0.0, "2": 0.0}}
            for r in records
        ]
        return {"version": 1, "predictions": predictions}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        return answer((await request.json())["inputs"])

    @app.post("/predict-many")  # what the gateway's coalescer sends: each request answered on its own
    async def predict_many(request: Request) -> dict[str, Any]:
        requests = (await request.json())["requests"]
        return {"responses": [{"status": 200, "body": answer(r["inputs"])} for r in requests]}

    return app


def _registry(routes: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/internal/routes")
    async def internal_routes() -> dict[str, Any]:
        return {"services": routes}

    @app.post("/internal/keys/verify")
    async def verify(request: Request) -> dict[str, Any]:
        key = (await request.json())["key"]
        if key == ADMIN:
            return {"key_id": "a", "name": "admin", "scopes": ["admin"], "services": None}
        if key == SCOPED:
            return {"key_id": "s", "name": "app", "scopes": ["predict"], "services": ["m"]}
        return {"type": "x", "title": "Unauthorized", "status": 401, "detail": "unknown key"}

    @app.post("/api/v1/services/{name}/{action}")
    async def toggle(name: str, action: str) -> dict[str, Any]:
        routes[name] = routes[name] | {
            "paused": action == "pause",
            "status": "paused" if action == "pause" else "running",
        }
        return {"name": name}

    return app


@pytest.fixture
def routes() -> dict[str, Any]:
    return {}


@pytest.fixture
def servers(routes: dict[str, Any]) -> Iterator[tuple[str, str]]:
    with LiveServer(_replica()) as replica, LiveServer(_registry(routes)) as registry:
        routes["m"] = {"status": "running", "paused": False, "model": "m", "version": 1,
                       "replicas": [replica.url], "signature": SIGNATURE}  # fmt: skip
        routes["other"] = routes["m"] | {"model": "other"}
        yield replica.url, registry.url


@pytest.fixture
async def gateway(settings: Settings, servers: tuple[str, str]) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    port = free_port()
    app = create_gateway(settings.model_copy(update={"registry_url": servers[1], "grpc_port": port}))
    async with asgi_client(app, Authorization=f"Bearer {ADMIN}") as client:
        yield client, f"127.0.0.1:{port}"


ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [0.1, 0.2, 6.0, 0.3]], dtype=np.float32)


async def test_rest_binary_request_and_binary_outputs(gateway: tuple[httpx.AsyncClient, str]) -> None:
    client, _ = gateway
    tensor = httpclient.InferInput("X", [2, 4], "FP32")
    tensor.set_data_from_numpy(ROWS)
    body, size = httpclient.InferenceServerClient.generate_request_body([tensor])
    headers = {"Inference-Header-Content-Length": str(size), "Content-Type": "application/octet-stream"}
    answer = await client.post("/v2/models/m/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["inference-header-content-length"])
    result = httpclient.InferResult.from_response_body(answer.content, header_length=length)
    assert result.as_numpy("label").tolist() == [0, 2]
    assert result.as_numpy("probabilities")[:, 0].tolist() == pytest.approx((ROWS[:, 0] / ROWS.sum(axis=1)).tolist())

    packed = await client.post("/v2/models/m/infer", content=gzip.compress(body),
                               headers=headers | {"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})  # fmt: skip
    assert packed.status_code == 200 and packed.headers.get("content-encoding") in (None, "gzip")

    bomb = gzip.compress(b" " * (2 * 1024 * 1024))
    app = client._transport.app  # type: ignore[attr-defined]
    app.state.settings = app.state.settings.model_copy(update={"v2_max_decompressed_bytes": 1024 * 1024})
    too_big = await client.post("/v2/models/m/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert too_big.status_code == 413 and too_big.json()["error"]


async def test_rest_config_stats_index_load_unload(
    gateway: tuple[httpx.AsyncClient, str], routes: dict[str, Any]
) -> None:
    client, _ = gateway
    config = (await client.get("/v2/models/m/config")).json()
    assert config["input"] == [{"name": "X", "data_type": "TYPE_FP32", "dims": [-1, 4]}]
    assert {o["name"] for o in config["output"]} == {"label", "probabilities"}
    before = (await client.get("/v2/models/m/stats")).json()["model_stats"][0]
    x = {"name": "X", "shape": [3, 4], "datatype": "FP32", "data": [1.0] * 12}
    assert (await client.post("/v2/models/m/infer", json={"inputs": [x]})).status_code == 200
    assert (await client.post("/v2/models/m/infer", json={"inputs": [x | {"shape": [2, 4]}]})).status_code == 422
    after = (await client.get("/v2/models/m/versions/1/stats")).json()["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 3
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 1
    assert after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"] == 1
    assert (await client.get("/v2/models/m/versions/2/stats")).status_code == 404

    index = (await client.post("/v2/repository/index")).json()
    assert [(m["name"], m["state"]) for m in index] == [("m", "READY"), ("other", "READY")]
    assert (await client.post("/v2/repository/models/other/unload")).json() == {}
    assert routes["other"]["paused"] is True
    assert (await client.post("/v2/repository/index", json={"ready": True})).json()[0]["name"] == "m"
    assert (await client.get("/v2/models/other/ready")).status_code == 503
    assert (await client.post("/v2/repository/models/other/load")).json() == {}
    assert (await client.get("/v2/models/other/ready")).status_code == 200
    refused = await client.post("/v2/repository/models/m/load", json={"parameters": {"config": "{}"}})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "parameters.config"

    scoped = {"Authorization": f"Bearer {SCOPED}"}
    assert [m["name"] for m in (await client.post("/v2/repository/index", headers=scoped)).json()] == ["m"]
    assert [s["name"] for s in (await client.get("/v2/models/stats", headers=scoped)).json()["model_stats"]] == ["m"]
    assert (await client.get("/v2/models/other/config", headers=scoped)).status_code == 403
    denied = await client.post("/v2/repository/models/m/unload", headers=scoped)
    assert denied.status_code == 403 and denied.json()["error"] == denied.json()["detail"]


async def test_grpc_typed_and_raw_contents_auth_and_codes(gateway: tuple[httpx.AsyncClient, str]) -> None:
    _, target = gateway
    admin = (("authorization", f"Bearer {ADMIN}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(service_pb2.ServerLiveRequest())).live
        typed = service_pb2.ModelInferRequest(model_name="m", id="t1")
        x = typed.inputs.add(name="X", datatype="FP64", shape=[2, 4])  # FP64 for the FP32 input: cast
        x.contents.fp64_contents.extend(ROWS.astype(np.float64).flatten().tolist())
        answer = await stub.ModelInfer(typed, metadata=admin)
        assert answer.id == "t1" and [o.name for o in answer.outputs] == ["label", "probabilities"]
        assert np.frombuffer(answer.raw_output_contents[0], "<i8").tolist() == [0, 2]
        assert list(answer.outputs[1].shape) == [2, 3]

        raw = service_pb2.ModelInferRequest(model_name="m", model_version="1")
        raw.inputs.add(name="X", datatype="FP32", shape=[2, 4])
        raw.raw_input_contents.append(ROWS.tobytes())
        raw.outputs.add(name="label")
        answer = await stub.ModelInfer(raw, metadata=admin)
        assert [o.name for o in answer.outputs] == ["label"]
        assert np.frombuffer(answer.raw_output_contents[0], "<i8").tolist() == [0, 2]

        async def code(call: Any, request: Any, metadata: Any = admin) -> grpc.StatusCode:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request, metadata=metadata)
            return caught.value.code()

        short = service_pb2.ModelInferRequest(model_name="m")
        short.inputs.add(name="X", datatype="FP32", shape=[2, 4])
        short.raw_input_contents.append(ROWS.tobytes()[:-4])
        assert await code(stub.ModelInfer, short) == grpc.StatusCode.INVALID_ARGUMENT
        assert await code(stub.ModelInfer, service_pb2.ModelInferRequest(model_name="x")) == grpc.StatusCode.NOT_FOUND
        assert await code(stub.ModelMetadata, service_pb2.ModelMetadataRequest(name="m"), ()) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        scoped = (("authorization", f"Bearer {SCOPED}"),)
        other = service_pb2.ModelConfigRequest(name="other")
        assert await code(stub.ModelConfig, other, scoped) == grpc.StatusCode.PERMISSION_DENIED
        config = await stub.ModelConfig(service_pb2.ModelConfigRequest(name="m"), metadata=scoped)
        assert config.config.input[0].name == "X" and list(config.config.input[0].dims) == [-1, 4]
        unload = service_pb2.RepositoryModelUnloadRequest(model_name="m")
        assert await code(stub.RepositoryModelUnload, unload, scoped) == grpc.StatusCode.PERMISSION_DENIED
        await stub.RepositoryModelUnload(unload, metadata=admin)
        assert not (await stub.ModelReady(service_pb2.ModelReadyRequest(name="m"), metadata=admin)).ready
        assert await code(stub.ModelInfer, raw) == grpc.StatusCode.UNAVAILABLE
        await stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="m"), metadata=admin)
        assert (await stub.ModelReady(service_pb2.ModelReadyRequest(name="m"), metadata=admin)).ready
        stats = await stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="m"), metadata=admin)
        assert stats.model_stats[0].inference_count >= 4 and stats.model_stats[0].inference_stats.fail.count >= 1
