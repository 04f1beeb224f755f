"""Real V2 clients against `modelserve up`: tritonclient HTTP and gRPC with their defaults, MLServer's codecs.

Nobody here wrote these clients: each call they offer that the Open Inference Protocol defines must work
unmodified (binary tensors on, as tritonclient sends by default), and their errors must decode.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import free_port
from tests.e2e.conftest import Platform, start_platform
from tests.e2e.test_services_e2e import running, upload, wait_for
from tests.fixtures.models import make_pmml_general_regression
from tests.fixtures.pmml_texts import glm_income

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


@dataclass
class V2Platform:
    platform: Platform
    grpc_url: str
    admin: dict[str, str]
    iris_key: str

    @property
    def http_url(self) -> str:
        return self.platform.url.removeprefix("http://")


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory, onnx_models: dict[str, Path]) -> Iterator[V2Platform]:
    """One platform for the module (starting one is the slow part): an ONNX and a PMML service, gRPC on."""
    tmp = tmp_path_factory.mktemp("v2")
    grpc_port = free_port()
    # A generous internal timeout: a PMML upload cross-checks engines in a JVM, slow on a loaded machine.
    env = {"MODELSERVE_GRPC_PORT": str(grpc_port), "MODELSERVE_REQUEST_TIMEOUT_SECONDS": "180"}
    platform = start_platform(tmp / "data", tmp / "up.log", env=env)
    try:
        headers = {"Authorization": f"Bearer {platform.admin_key}"}
        with httpx.Client(base_url=platform.url, headers=headers, timeout=60) as admin:
            upload(admin, "iris", onnx_models["random_forest"])
            upload(admin, "glm", make_pmml_general_regression(tmp))
            for name in ("iris", "glm"):
                assert admin.post("/api/v1/services", json={"name": name, "model": name}).status_code == 201
            wait_for(lambda: running(admin, "iris") and running(admin, "glm"), timeout=120, what="services running")
            scoped = {"name": "iris-app", "scopes": ["predict"], "services": ["iris"]}
            key = admin.post("/api/v1/keys", json=scoped).json()["key"]
        yield V2Platform(platform, f"127.0.0.1:{grpc_port}", headers, key)
    finally:
        if platform.process.poll() is None:
            platform.stop()


def _http_input(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _grpc_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _glm_columns(dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    age = np.array([[40.0], [30.0]], dtype=dtype)
    work = np.array([[b"public"], [b"self"]], dtype=np.object_)
    hours = np.array([[40.0], [20.0]], dtype=dtype)
    return age, work, hours


GLM_EXPECTED = [glm_income(40.0, "public", 40.0), glm_income(30.0, "self", 20.0)]


def test_tritonclient_http_with_its_defaults(v2: V2Platform) -> None:
    client = httpclient.InferenceServerClient(url=v2.http_url, network_timeout=120, connection_timeout=120)
    h = v2.admin  # passed as a copy each time: tritonclient adds its own headers to the dict it is given
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "modelserve" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("iris", headers={**h}) and client.is_model_ready("iris", "1", headers={**h})
    model = client.get_model_metadata("iris", headers={**h})
    assert model["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    config = client.get_model_config("iris", headers={**h})
    assert config["platform"] == "onnxruntime_onnx" and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == [-1, 4]
    index = {m["name"]: m for m in client.get_model_repository_index(headers={**h})}
    assert index["iris"]["state"] == "READY" and index["glm"]["version"] == "1"

    # Binary tensors both ways (the client's default: no outputs named means every output binary).
    result = client.infer("iris", [_http_input("X", ROWS, "FP32")], headers={**h})
    assert result.as_numpy("label").tolist() == [0, 2]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1.0)
    assert "binary_data_size" in result.get_output("label")["parameters"]

    # JSON both ways; FP64 data for the FP32 input is cast as the client expects.
    outputs = [httpclient.InferRequestedOutput("label", binary_data=False)]
    as_json = client.infer("iris", [_http_input("X", ROWS.astype(np.float64), "FP64", binary=False)], outputs=outputs,
                           headers={**h}, model_version="1", request_id="r-7")  # fmt: skip
    response = as_json.get_response()
    assert response["id"] == "r-7" and response["outputs"][0]["data"] == [0, 2]
    assert [o["name"] for o in response["outputs"]] == ["label"]

    # Compressed both ways.
    for algorithm in ("gzip", "deflate"):
        packed = client.infer(
            "iris",
            [_http_input("X", ROWS, "FP32")],
            headers={**h},
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        assert packed.as_numpy("label").tolist() == [0, 2]

    # PMML: float32 columns into double fields, a BYTES column into a string field.
    age, work, hours = _glm_columns(np.float32)
    glm = client.infer("glm", [_http_input("age", age, "FP32"), _http_input("work", work, "BYTES"),
                               _http_input("hours", hours, "FP32")], headers={**h})  # fmt: skip
    assert np.allclose(glm.as_numpy("value"), GLM_EXPECTED)

    stats = client.get_inference_statistics("iris", headers={**h})["model_stats"][0]
    assert stats["name"] == "iris" and stats["version"] == "1"
    assert stats["inference_count"] >= 8 and stats["inference_stats"]["success"]["count"] >= 4
    assert stats["inference_stats"]["success"]["ns"] > 0 and stats["last_inference"] > 0
    everything = {s["name"] for s in client.get_inference_statistics(headers={**h})["model_stats"]}
    assert everything == {"iris", "glm"}

    # Errors decode: the client reads the body's `error` member.
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nope", [_http_input("X", ROWS, "FP32")], headers={**h})
    assert unknown.value.status() == "404" and "does not exist" in unknown.value.message()
    with pytest.raises(InferenceServerException) as bad:
        client.infer("iris", [_http_input("X", ROWS[:, :3].copy(), "FP32")], headers={**h})
    assert bad.value.status() == "422" and "inputs[0].shape" in bad.value.message()
    with pytest.raises(InferenceServerException) as lossy:
        client.infer("iris", [_http_input("X", np.full((1, 4), 2**25 + 1, dtype=np.int64), "INT64")], headers={**h})
    assert lossy.value.status() == "422" and "inputs[0].data" in lossy.value.message()
    with pytest.raises(InferenceServerException) as no_key:
        client.get_model_metadata("iris")
    assert no_key.value.status() == "401"

    # Unload pauses the service, load starts it and answers once it serves again.
    client.unload_model("glm", headers={**h})
    assert not client.is_model_ready("glm", headers={**h})
    with pytest.raises(InferenceServerException) as paused:
        client.infer("glm", [_http_input("age", age, "FP32")], headers={**h})
    assert paused.value.status() == "503" and "paused" in paused.value.message()
    client.load_model("glm", headers={**h})
    assert client.is_model_ready("glm", headers={**h})

    # A predict key limited to one service sees only that one, and cannot load or unload.
    scoped = {"Authorization": f"Bearer {v2.iris_key}"}
    assert [m["name"] for m in client.get_model_repository_index(headers={**scoped})] == ["iris"]
    with pytest.raises(InferenceServerException) as forbidden:
        client.unload_model("iris", headers={**scoped})
    assert forbidden.value.status() == "403"
    allowed = client.infer("iris", [_http_input("X", ROWS, "FP32")], headers={**scoped})
    assert allowed.as_numpy("label").tolist() == [0, 2]
    client.close()


def test_tritonclient_grpc_with_its_defaults(v2: V2Platform) -> None:
    client = grpcclient.InferenceServerClient(url=v2.grpc_url)
    h = {"authorization": v2.admin["Authorization"]}
    assert client.is_server_live() and client.is_server_ready()
    assert "model_repository" in client.get_server_metadata(as_json=True)["extensions"]
    assert client.is_model_ready("iris", headers={**h})
    model = client.get_model_metadata("iris", headers={**h}, as_json=True)
    assert model["inputs"] == [{"name": "X", "datatype": "FP32", "shape": ["-1", "4"]}]
    config = client.get_model_config("iris", headers={**h}).config
    assert config.platform == "onnxruntime_onnx" and list(config.input[0].dims) == [-1, 4]
    index = {m.name: m for m in client.get_model_repository_index(headers={**h}).models}
    assert index["iris"].state == "READY" and set(index) == {"iris", "glm"}

    result = client.infer("iris", [_grpc_input("X", ROWS, "FP32")], headers={**h})
    assert result.as_numpy("label").tolist() == [0, 2]
    assert result.as_numpy("probabilities").shape == (2, 3)
    asked = client.infer("iris", [_grpc_input("X", ROWS.astype(np.float64), "FP64")], headers={**h},
                         outputs=[grpcclient.InferRequestedOutput("label")], compression_algorithm="gzip")  # fmt: skip
    assert [o.name for o in asked.get_response().outputs] == ["label"]
    assert asked.as_numpy("label").tolist() == [0, 2]
    age, work, hours = _glm_columns(np.float32)
    glm = client.infer("glm", [_grpc_input("age", age, "FP32"), _grpc_input("work", work, "BYTES"),
                               _grpc_input("hours", hours, "FP32")], headers={**h})  # fmt: skip
    assert np.allclose(glm.as_numpy("value"), GLM_EXPECTED)

    stats = client.get_inference_statistics("iris", headers={**h}, as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= 4 and int(stats["inference_stats"]["success"]["count"]) >= 2
    assert {s.name for s in client.get_inference_statistics(headers={**h}).model_stats} == {"iris", "glm"}

    def code_of(call: Any) -> tuple[str, str]:
        with pytest.raises(InferenceServerException) as caught:
            call()
        return str(caught.value.status()), caught.value.message()

    status, message = code_of(lambda: client.infer("nope", [_grpc_input("X", ROWS, "FP32")], headers={**h}))
    assert status == "StatusCode.NOT_FOUND" and "does not exist" in message
    narrow = [_grpc_input("X", ROWS[:, :3].copy(), "FP32")]
    status, message = code_of(lambda: client.infer("iris", narrow, headers={**h}))
    assert status == "StatusCode.INVALID_ARGUMENT" and "inputs[0].shape" in message
    assert code_of(lambda: client.get_model_metadata("iris"))[0] == "StatusCode.UNAUTHENTICATED"
    scoped = {"authorization": f"Bearer {v2.iris_key}"}
    assert code_of(lambda: client.get_model_metadata("glm", headers={**scoped}))[0] == "StatusCode.PERMISSION_DENIED"
    assert [m.name for m in client.get_model_repository_index(headers={**scoped}).models] == ["iris"]

    client.unload_model("glm", headers={**h})
    assert not client.is_model_ready("glm", headers={**h})
    status, message = code_of(lambda: client.infer("glm", [_grpc_input("age", age, "FP32")], headers={**h}))
    assert status == "StatusCode.UNAVAILABLE" and "paused" in message
    client.load_model("glm", headers={**h})
    assert client.is_model_ready("glm", headers={**h})
    client.close()


def test_mlserver_codec_bodies_over_rest(v2: V2Platform) -> None:
    """The bodies MLServer's codecs make (`NumpyCodec`, `PandasCodec` with a float32 frame and a string column,
    `StringCodec`), serialised as MLServer's client does (`InferenceRequest.model_dump_json`, bytes as text)."""
    numpy_body = {  # NumpyCodec.encode_input("X", float64 array): MLServer sends what numpy holds
        "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP64", "parameters": {"content_type": "np"},
                    "data": ROWS.astype(np.float64).flatten().tolist()}],
    }  # fmt: skip
    pandas_body = {  # PandasCodec.encode_request(frame of float32 columns and a str column)
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": "age", "shape": [2, 1], "datatype": "FP32", "data": [40.0, 30.0]},
            {"name": "work", "shape": [2, 1], "datatype": "BYTES", "data": ["public", "self"],
             "parameters": {"content_type": "str"}},
            {"name": "hours", "shape": [2, 1], "datatype": "FP32", "data": [40.0, 20.0]},
        ],
    }  # fmt: skip
    with httpx.Client(base_url=v2.platform.url, headers=v2.admin, timeout=60) as client:
        answer = client.post("/v2/models/iris/infer", json=numpy_body)
        assert answer.status_code == 200, answer.text
        assert {o["name"]: o for o in answer.json()["outputs"]}["label"]["data"] == [0, 2]
        answer = client.post("/v2/models/glm/infer", json=pandas_body)
        assert answer.status_code == 200, answer.text
        assert np.allclose(answer.json()["outputs"][0]["data"], GLM_EXPECTED)
        # gzip by hand, as curl --data-binary of a .gz file with Content-Encoding would send it
        packed = client.post("/v2/models/glm/infer", content=gzip.compress(orjson.dumps(pandas_body)),
                             headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})  # fmt: skip
        assert packed.status_code == 200 and np.allclose(packed.json()["outputs"][0]["data"], GLM_EXPECTED)
        problem = client.post("/v2/models/glm/infer", json={"inputs": [{"name": "age", "datatype": "FP32"}]})
        assert problem.status_code == 422 and problem.headers["content-type"] == "application/problem+json"
        assert problem.json()["error"] == problem.json()["detail"] and problem.json()["errors"]
