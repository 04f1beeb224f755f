"""The model-test endpoint of a pool inference process, resolving versions through a real registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from inference.app import create_app as create_inference
from registry.app import create_app as create_registry
from shared.settings import Settings
from tests.conftest import LiveServer, asgi_client

IRIS = {"X": [5.1, 3.5, 1.4, 0.2]}


@pytest.fixture
def registry_server(settings: Settings, onnx_models: dict[str, Path], pmml_models: dict[str, Path]) -> Iterator[str]:
    with LiveServer(create_registry(settings)) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        for name, path in (("rf", onnx_models["random_forest"]), ("tree", pmml_models["decision_tree"]),
                           ("lin", onnx_models["linear_regression"]), ("km", pmml_models["kmeans"])):  # fmt: skip
            resp = client.post("/api/v1/models", data={"name": name}, files={"file": (path.name, path.read_bytes())})
            assert resp.status_code == 201, resp.text
        client.put("/api/v1/models/rf/aliases/production", json={"version": 1})
        yield server.url


@pytest.fixture
async def pool(settings: Settings, registry_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(create_inference(settings.model_copy(update={"registry_url": registry_server}))) as c:
        yield c


async def test_single_many_and_column_forms_answer_in_order(pool: httpx.AsyncClient) -> None:
    one = await pool.post("/api/v1/models/rf/versions/latest/test", json={"inputs": IRIS})
    assert one.status_code == 200, one.text
    body = one.json()
    assert (body["model"], body["version"]) == ("rf", 1)
    assert body["predictions"][0]["label"] == 0
    assert set(body["predictions"][0]["probabilities"]) == {"0", "1", "2"}
    assert body["timing"]["total_ms"] > 0

    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    many = (await pool.post("/api/v1/models/rf/versions/1/test", json={"inputs": [{"X": r} for r in rows]})).json()
    columns = (
        await pool.post(
            "/api/v1/models/rf/versions/production/test", json={"columns": ["X"], "data": [[r] for r in rows]}
        )
    ).json()
    assert [p["label"] for p in many["predictions"]] == [0, 2, 1]
    assert many["predictions"] == columns["predictions"]


async def test_pmml_csv_file_and_extra_field_warning(pool: httpx.AsyncClient) -> None:
    csv = "sepal_length,sepal_width,petal_length,petal_width,comment\n5.1,3.5,1.4,0.2,x\n6.7,3.0,5.2,2.3,y\n"
    resp = await pool.post(
        "/api/v1/models/tree/versions/1/test", files={"file": ("rows.csv", csv.encode(), "text/csv")}
    )
    if resp.status_code == 422:  # the fixture's field names differ: say which
        pytest.fail(resp.text)
    body = resp.json()
    assert len(body["predictions"]) == 2
    assert all("label" in p and "probabilities" in p for p in body["predictions"])
    assert "ignored unknown field 'comment'" in body["warnings"]  # the tree may not use every column either


async def test_invalid_record_names_index_and_field(pool: httpx.AsyncClient) -> None:
    resp = await pool.post("/api/v1/models/rf/versions/1/test", json={"inputs": [IRIS, {"X": [1, 2, "abc", 4]}, {}]})
    assert resp.status_code == 422
    fields = {e["field"] for e in resp.json()["errors"]}
    assert fields == {"inputs[1].X", "inputs[2].X"}
    bad_body = await pool.post("/api/v1/models/rf/versions/1/test", json={"columns": ["X"], "data": [[1, 2]]})
    assert bad_body.status_code == 422 and bad_body.json()["errors"][0]["field"] == "data[0]"
    not_json = await pool.post(
        "/api/v1/models/rf/versions/1/test", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422


async def test_unknown_model_or_version_is_404(pool: httpx.AsyncClient) -> None:
    assert (await pool.post("/api/v1/models/nope/versions/1/test", json={"inputs": IRIS})).status_code == 404
    assert (await pool.post("/api/v1/models/rf/versions/9/test", json={"inputs": IRIS})).status_code == 404


async def test_regression_and_clustering_shapes_and_cache_metrics(pool: httpx.AsyncClient) -> None:
    hits_before = REGISTRY.get_sample_value("modelserve_session_cache_hits_total") or 0.0
    lin = (await pool.post("/api/v1/models/lin/versions/1/test", json={"inputs": {"X": [1.0, 2.0, 3.0]}})).json()
    assert isinstance(lin["predictions"][0]["value"], float)
    await pool.post("/api/v1/models/lin/versions/1/test", json={"inputs": {"X": [1.0, 2.0, 3.0]}})
    assert (REGISTRY.get_sample_value("modelserve_session_cache_hits_total") or 0.0) > hits_before
    example = {"sepal_length": 5.0, "sepal_width": 3.0, "petal_length": 4.0, "petal_width": 1.0}
    km = await pool.post("/api/v1/models/km/versions/1/test", json={"inputs": example})
    assert km.status_code == 200, km.text
    assert isinstance(km.json()["predictions"][0]["cluster"], int | str)


async def test_example_body_is_accepted_by_test(pool: httpx.AsyncClient, registry_server: str) -> None:
    async with httpx.AsyncClient(base_url=registry_server, timeout=120) as registry:
        for name in ("rf", "tree", "lin", "km"):
            example = (await registry.get(f"/api/v1/models/{name}/versions/latest/example")).json()
            resp = await pool.post(f"/api/v1/models/{name}/versions/latest/test", json=example)
            assert resp.status_code == 200, (name, example, resp.text)


async def test_a_declared_oversized_file_is_refused_before_reading(pool: httpx.AsyncClient) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.csv"\r\n\r\n'
        for _ in range(512):
            sent += 1
            yield b"a" * (1024 * 1024)

    resp = await pool.post(
        "/api/v1/models/rf/versions/1/test",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(512 * 1024 * 1024)},
    )
    assert resp.status_code == 413
    assert sent < 512
