"""ONNX graphs served as they are: no batch axis assumed where the graph declares none, outputs exactly as
onnxruntime gives them, fixed dimensions reported as declared; through the runtime and the model-test HTTP API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from inference.app import create_app as create_inference
from inference.runtimes import load_runtime
from registry.app import create_app as create_registry
from shared.errors import ValidationFailed
from shared.settings import Settings
from tests.conftest import LiveServer, asgi_client
from tests.fixtures import models


@pytest.fixture(scope="module")
def shaped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("shaped")
    return {
        "concat": models.make_onnx_concat(directory),
        "scalar_sum": models.make_onnx_scalar_sum(directory),
        "fixed_shape": models.make_onnx_fixed_shape(directory),
        "neural_network": models.make_onnx_neural_network(directory),
    }


def _bare(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"]).run(None, feeds))


def test_only_a_common_leading_dynamic_dimension_is_a_batch_axis(
    shaped: dict[str, Path], onnx_models: dict[str, Path], runtime_settings: Settings
) -> None:
    batched = {name: load_runtime(path, runtime_settings).description.batched for name, path in shaped.items()}
    assert batched == {"concat": False, "scalar_sum": False, "fixed_shape": False, "neural_network": True}
    for name, path in onnx_models.items():  # every skl2onnx graph keeps its batch: [None, k] in, [None, …] out
        assert load_runtime(path, runtime_settings).description.batched, name


def test_inputs_with_different_leading_dimensions(shaped: dict[str, Path], runtime_settings: Settings) -> None:
    runtime = load_runtime(shaped["concat"], runtime_settings)
    a, b = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[7.0, 8.0, 9.0]]
    (answer,) = runtime.predict([{"A": a, "B": b}])
    (expected,) = _bare(shaped["concat"], {"A": np.asarray(a, np.float32), "B": np.asarray(b, np.float32)})
    assert answer == {"raw": {"C": expected.tolist()}}
    assert np.asarray(answer["raw"]["C"]).shape == (3, 3)


def test_zero_length_leading_dimension_and_scalar_output(shaped: dict[str, Path], runtime_settings: Settings) -> None:
    runtime = load_runtime(shaped["scalar_sum"], runtime_settings)
    empty, full = runtime.predict([{"x": []}, {"x": [[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]]}])
    assert empty == {"raw": {"total": 0.0}}  # a scalar, not [0.0] nor [[0.0]]
    assert full == {"raw": {"total": 12.0}}
    concat = load_runtime(shaped["concat"], runtime_settings)
    (answer,) = concat.predict([{"A": [], "B": [[1.0, 1.0, 1.0]]}])
    assert answer["raw"]["C"] == [[1.0, 1.0, 1.0]]


def test_fixed_dimensions_are_kept_and_enforced(shaped: dict[str, Path], runtime_settings: Settings) -> None:
    runtime = load_runtime(shaped["fixed_shape"], runtime_settings)
    assert runtime.description.inputs[0].shape == [2, 3]
    assert runtime.description.outputs[0].shape == [2, 3]
    (answer,) = runtime.predict([{"x": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}])
    assert answer["raw"]["y"] == [[2.0, 4.0, 6.0], [8.0, 10.0, 12.0]]  # no leading axis added or dropped
    with pytest.raises(ValidationFailed) as refused:
        runtime.predict([{"x": [[1.0, 2.0, 3.0]]}])
    assert refused.value.errors and refused.value.errors[0]["field"] == "inputs[0].x"


def test_batched_outputs_keep_their_per_row_shape(shaped: dict[str, Path], runtime_settings: Settings) -> None:
    runtime = load_runtime(shaped["neural_network"], runtime_settings)
    rows = [[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 0.5, 2.0]]
    answers = runtime.predict([{"x": row} for row in rows])
    (expected,) = _bare(shaped["neural_network"], {"x": np.asarray(rows, np.float32)})
    assert [a["raw"]["y"] for a in answers] == expected.tolist()  # row i of [N, 2] is answer i's [2]


# --- through HTTP: upload to a real registry, model test on a pool inference process -------------------------


@pytest.fixture
def registry_server(settings: Settings, shaped: dict[str, Path], onnx_models: dict[str, Path]) -> Iterator[str]:
    with LiveServer(create_registry(settings)) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        uploads = {**shaped, "rf": onnx_models["random_forest"], "lin": onnx_models["linear_regression"]}
        for name, path in uploads.items():
            resp = client.post(
                "/api/v1/models", data={"name": name.replace("_", "-")}, files={"file": (path.name, path.read_bytes())}
            )
            assert resp.status_code == 201, resp.text
        yield server.url


@pytest.fixture
async def pool(settings: Settings, registry_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_inference(settings.model_copy(update={"registry_url": registry_server}))) as c:
        yield c


async def test_described_as_declared_and_answered_as_given_over_http(
    pool: httpx.AsyncClient, registry_server: str
) -> None:
    async with httpx.AsyncClient(base_url=registry_server, timeout=120) as registry:
        fixed = (await registry.get("/api/v1/models/fixed-shape/versions/1")).json()
        assert fixed["inputs"][0]["shape"] == [2, 3] and fixed["batched"] is False
        assert (await registry.get("/api/v1/models/rf/versions/1")).json()["batched"] is True
    resp = await pool.post(
        "/api/v1/models/concat/versions/1/test", json={"inputs": {"A": [[1, 2, 3], [4, 5, 6]], "B": [[7, 8, 9]]}}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"] == [{"raw": {"C": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}}]
    total = await pool.post("/api/v1/models/scalar-sum/versions/1/test", json={"inputs": {"x": []}})
    assert total.status_code == 200, total.text
    assert total.json()["predictions"] == [{"raw": {"total": 0.0}}]
    wrong = await pool.post("/api/v1/models/fixed-shape/versions/1/test", json={"inputs": {"x": [1, 2, 3]}})
    assert wrong.status_code == 422
    assert [e["field"] for e in wrong.json()["errors"]] == ["inputs[0].x"]
    async with httpx.AsyncClient(base_url=registry_server, timeout=120) as registry:
        for name in ("concat", "scalar-sum", "fixed-shape"):
            example = (await registry.get(f"/api/v1/models/{name}/versions/1/example")).json()
            answered = await pool.post(f"/api/v1/models/{name}/versions/1/test", json=example)
            assert answered.status_code == 200, (name, example, answered.text)
    fixed_example = (await pool.post("/api/v1/models/fixed-shape/versions/1/test", json=example)).json()
    assert fixed_example["predictions"][0]["raw"]["y"] == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


# --- JSON NaN / Infinity and CSV into a single tensor ---------------------------------------------------------


async def test_json_nan_and_infinity_literals_are_accepted(pool: httpx.AsyncClient) -> None:
    # What Python's json.dumps writes; orjson alone refuses it as invalid JSON.
    body = json.dumps({"inputs": [{"X": [float("nan"), 3.5, 1.4, 0.2]}, {"X": [5.1, float("inf"), 1.4, 0.2]}]})
    assert "NaN" in body and "Infinity" in body
    resp = await pool.post(
        "/api/v1/models/rf/versions/1/test", content=body, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 200, resp.text
    assert [p["label"] for p in resp.json()["predictions"]] == [0, 0]  # the trees read NaN as missing
    broken = await pool.post(
        "/api/v1/models/rf/versions/1/test",
        content=b'{"inputs": {"X": [NaN, 1, 2',
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 422 and broken.json()["errors"][0]["field"] == "body"


async def test_csv_columns_in_order_feed_a_single_tensor_input(pool: httpx.AsyncClient) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    csv = ",".join(models.FEATURES) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    resp = await pool.post("/api/v1/models/rf/versions/1/test", files={"file": ("iris.csv", csv.encode(), "text/csv")})
    assert resp.status_code == 200, resp.text
    json_body = await pool.post("/api/v1/models/rf/versions/1/test", json={"inputs": [{"X": r} for r in rows]})
    assert resp.json()["predictions"] == json_body.json()["predictions"]
    assert [p["label"] for p in resp.json()["predictions"]] == [0, 2, 1]
    # The regressor's X takes 3 columns: 4 do not fit, and the error says how many it takes.
    wrong = await pool.post(
        "/api/v1/models/lin/versions/1/test", files={"file": ("iris.csv", csv.encode(), "text/csv")}
    )
    assert wrong.status_code == 422
    (error,) = wrong.json()["errors"]
    assert error["field"] == "columns" and error["expected"] == 3
