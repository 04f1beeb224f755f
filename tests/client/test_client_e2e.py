"""`modelserve.Client` and `AsyncClient` against a real `modelserve up`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from modelserve import AsyncClient, Client, ConflictError, NotFoundError, ValidationError
from modelserve import types as t
from tests.client.conftest import IRIS_CSV
from tests.e2e.conftest import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture
def ms(shared_platform: Platform) -> Any:
    with Client(shared_platform.url, shared_platform.admin_key) as client:
        yield client


def test_upload_describe_test_deploy_predict(ms: Client, example_models: Path) -> None:
    sent: list[tuple[int, int | None]] = []
    version = ms.upload_model(
        example_models / "iris.onnx",
        "iris",
        description="decision tree",
        progress=lambda done, total: sent.append((done, total)),
    )
    assert isinstance(version, t.ModelVersion) and version.version == 1 and version.function_type == "classification"
    assert sent and sent[-1][0] == sent[-1][1] == (example_models / "iris.onnx").stat().st_size
    assert ms.describe("iris").class_labels == ["setosa", "versicolor", "virginica"]
    assert ms.set_alias("iris", "production", 1).version == 1
    assert ms.test("iris", SETOSA, "production").predictions[0]["label"] == "setosa"
    assert len(ms.test("iris", IRIS_CSV).predictions) == 12  # a CSV file, uploaded as it is
    assert set(ms.example("iris")["inputs"]) >= {"sepal_length"}

    service = ms.deploy("iris", alias="production", replicas=2, wait=True)
    assert service.status == "running" and service.ready_replicas == 2
    # `wait=True` means the gateway routes to it: the first predict is not a 503.
    assert ms.predict("iris", SETOSA).predictions[0]["label"] == "setosa"
    assert ms.list_services().total == 1

    # pandas in, pandas out, row order kept.
    frame = pd.read_csv(IRIS_CSV)
    answer = ms.predict("iris", frame).to_pandas()
    assert len(answer) == len(frame) and list(answer["label"][:3]) == ["setosa"] * 3
    assert answer.loc[6, "label"] == "virginica" and answer["probability(setosa)"][0] == pytest.approx(1.0)

    job = ms.submit("iris", frame.head(2))
    assert job.status == "queued"
    done = ms.wait(job.id, timeout=60)
    assert done.status == "succeeded" and [p["label"] for p in done.predictions or []] == ["setosa", "setosa"]
    assert ms.result(job.id).status == "succeeded"
    assert ms.list_async_jobs("iris", status="succeeded").total >= 1


def test_errors_carry_the_problem_fields(ms: Client, example_models: Path) -> None:
    with pytest.raises(NotFoundError) as missing:
        ms.describe("nope")
    assert missing.value.status == 404 and "nope" in (missing.value.detail or "")
    ms.upload_model(example_models / "diabetes.onnx", "diabetes")
    with pytest.raises(ValidationError) as invalid:
        ms.test("diabetes", {"age": "old"})
    assert invalid.value.status == 422 and invalid.value.title
    assert any(e["field"] == "inputs[0].age" for e in invalid.value.errors)
    assert "inputs[0].age" in str(invalid.value)
    ms.deploy("diabetes", wait=False)
    with pytest.raises(ConflictError):
        ms.deploy("diabetes")


def test_service_creation_waits_with_the_api_wait_parameter(shared_platform: Platform, example_models: Path) -> None:
    headers = {"Authorization": f"Bearer {shared_platform.admin_key}"}
    with Client(shared_platform.url, shared_platform.admin_key) as ms:
        ms.upload_model(example_models / "clusters.onnx", "clusters")
    with httpx.Client(base_url=shared_platform.url, headers=headers, timeout=120) as http:
        too_long = http.post("/api/v1/services", params={"wait": 100_000}, json={"name": "c", "model": "clusters"})
        assert too_long.status_code == 422 and too_long.json()["errors"][0]["field"] == "wait"
        created = http.post("/api/v1/services", params={"wait": 60}, json={"name": "clusters", "model": "clusters"})
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "running" and created.json()["ready_replicas"] == 1
        page = http.get("/api/v1/services", params={"limit": 1, "offset": 0}).json()
        assert set(page) == {"items", "total", "limit", "offset"} and len(page["items"]) == 1
        keys = http.get("/api/v1/keys").json()
        assert set(keys) == {"items", "total", "limit", "offset"}


def test_datasets_and_a_batch_run_with_progress(ms: Client, example_models: Path, tmp_path: Path) -> None:
    ms.upload_model(example_models / "iris.onnx", "iris-batch")
    ms.deploy("iris-batch", wait=True)
    uploaded: list[int] = []
    dataset = ms.upload_dataset(IRIS_CSV, "rows", progress=lambda done, _total: uploaded.append(done))
    assert dataset.rows == 12 and uploaded[-1] == IRIS_CSV.stat().st_size
    assert [c.name for c in ms.get_dataset("rows").columns or []][:1] == ["sepal_length"]
    ms.create_job("score", {"service": "iris-batch", "input_dataset": "rows", "output_dataset": "scored"})
    seen: list[t.Run] = []
    run = ms.run_job("score", wait=True, timeout=300, progress=seen.append)
    assert run.status == "succeeded" and run.rows_done == 12 and seen[-1].status == "succeeded"
    out = ms.download_result("score", run.number, tmp_path / "scored.csv")
    assert len(pd.read_csv(out)) == 12
    assert ms.list_runs("score").items[0].number == run.number
    back = ms.download_dataset("rows", tmp_path / "rows.csv")
    assert back.read_bytes() == IRIS_CSV.read_bytes()
    with pytest.raises(NotFoundError):
        ms.get_run("score", 99)


async def test_async_client(shared_platform: Platform, example_models: Path) -> None:
    async with AsyncClient(shared_platform.url, shared_platform.admin_key) as ms:
        await ms.upload_model(example_models / "iris.onnx", "iris-async")
        service = await ms.deploy("iris-async", wait=True)
        assert service.status == "running"
        frame = pd.read_csv(IRIS_CSV)
        answer = await ms.predict("iris-async", frame)
        assert list(answer.to_pandas()["label"]) == list((await ms.test("iris-async", frame)).to_pandas()["label"])
        job = await ms.submit("iris-async", SETOSA)
        assert (await ms.wait(job.id, timeout=60)).predictions == [answer.predictions[0]]
        key = await ms.create_key("async", ["predict"])
        assert key.id in {k.id for k in (await ms.list_keys()).items}
        await ms.revoke_key(key.id)
        with pytest.raises(NotFoundError):
            await ms.get_service("nope")


def test_the_typed_results_match_the_openapi_document(shared_platform: Platform) -> None:
    """Every field a result model declares is a property of the server's schema of the same name."""
    doc = httpx.get(f"{shared_platform.url}/openapi.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    pairs = {
        t.ModelVersion: "ModelVersionPublic",
        t.ModelSummary: "ModelSummary",
        t.ModelDetail: "ModelDetail",
        t.Service: "ServicePublic",
        t.ApiKey: "ApiKeyPublic",
        t.ApiKeyCreated: "ApiKeyCreated",
        t.DatasetDetail: "DatasetDetail",
        t.Run: "RunPublic",
        t.BatchJob: "BatchJobPublic",
        t.Alias: "AliasPublic",
        t.Replica: "ReplicaStatus",
        t.Column: "DatasetColumn",
        t.FieldSpec: "FieldSpec",
    }
    for model, name in pairs.items():
        assert name in schemas, f"{name} is not in the OpenAPI document"
        missing = set(model.model_fields) - set(schemas[name]["properties"])
        assert not missing, f"{model.__name__} declares {missing}, which {name} does not have"


def test_url_and_key_come_from_the_environment(shared_platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSERVE_URL", shared_platform.url)
    monkeypatch.setenv("MODELSERVE_API_KEY", shared_platform.admin_key)
    monkeypatch.setenv("XDG_CONFIG_HOME", os.devnull)
    with Client() as ms:
        assert ms.list_models().total >= 0
