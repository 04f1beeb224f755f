"""A data scientist's path through the running platform: upload, inspect, test, download, delete."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_upload_describe_test_and_delete_through_the_gateway(
    platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path], pmml_models: dict[str, Path]
) -> None:
    rf = onnx_models["random_forest"]
    created = admin.post("/api/v1/models", data={"name": "iris"}, files={"file": ("rf.onnx", rf.read_bytes())})
    assert created.status_code == 201, created.text
    tree = pmml_models["random_forest"]
    second = admin.post("/api/v1/models", data={"name": "iris"}, files={"file": ("rf.pmml", tree.read_bytes())})
    assert second.json()["version"] == 2 and second.json()["engine"]["name"] == "pmml"

    described = admin.get("/api/v1/models/iris/versions/1").json()
    assert described["algorithm"] == "TreeEnsembleClassifier" and described["class_labels"] == [0, 1, 2]
    assert httpx.get(f"{platform.url}/api/v1/models/iris").status_code == 401

    example = admin.get("/api/v1/models/iris/versions/1/example").json()
    tested = admin.post("/api/v1/models/iris/versions/1/test", json=example)
    assert tested.status_code == 200, tested.text
    assert tested.json()["predictions"][0]["label"] in (0, 1, 2)

    csv = b"sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
    by_file = admin.post("/api/v1/models/iris/versions/latest/test", files={"file": ("x.csv", csv, "text/csv")})
    assert by_file.status_code == 200, by_file.text
    assert [p["label"] for p in by_file.json()["predictions"]] in (["setosa", "virginica"], [0, 2])

    invalid = admin.post("/api/v1/models/iris/versions/1/test", json={"inputs": {"X": [1, 2]}})
    assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "inputs[0].X"

    assert admin.get("/api/v1/models/iris/versions/1/artifact").content == rf.read_bytes()
    doc = httpx.get(f"{platform.url}/openapi.json").json()
    assert "/api/v1/models" in doc["paths"] and "/api/v1/models/{name}/versions/{version}/test" in doc["paths"]

    assert admin.delete("/api/v1/models/iris").status_code == 204
    assert admin.get("/api/v1/models/iris").status_code == 404
