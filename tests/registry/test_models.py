"""Model registry through its HTTP API: upload, describe, version, alias, download, delete, refuse bad input."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.runtimes import load_runtime
from registry.app import create_app
from shared.settings import Settings
from tests.conftest import asgi_client


async def upload(client: httpx.AsyncClient, path: Path, name: str = "m", **fields: str) -> httpx.Response:
    with path.open("rb") as fh:
        return await client.post(
            "/api/v1/models",
            data={"name": name, **fields},
            files={"file": (path.name, fh.read(), "application/octet-stream")},
        )


def stored_files(settings: Settings) -> list[Path]:
    return [p for p in settings.artifacts_dir.rglob("*") if p.is_file()]


def _all_models(pmml: dict[str, Path], onnx: dict[str, Path]) -> dict[str, Path]:
    return {f"pmml-{k}": v for k, v in pmml.items()} | {f"onnx-{k}": v for k, v in onnx.items()}


async def test_every_fixture_uploads_and_is_described_as_the_runtime_sees_it(
    sqlite_registry: httpx.AsyncClient, sqlite_settings: Settings, pmml_models: dict[str, Path],
    onnx_models: dict[str, Path],
) -> None:  # fmt: skip
    for name, path in _all_models(pmml_models, onnx_models).items():
        resp = await upload(sqlite_registry, path, name=name.replace("_", "-"))
        assert resp.status_code == 201, (name, resp.text)
        body = resp.json()
        direct = load_runtime(path, sqlite_settings).description
        assert body["format"] == direct.format == name.split("-")[0]
        assert body["engine"]["name"] == direct.format and body["engine"]["version"]
        assert body["engine"]["implementation"] == direct.engine.implementation
        assert (body["algorithm"], body["function_type"]) == (direct.algorithm, direct.function_type), name
        assert [(i["name"], i["data_type"]) for i in body["inputs"]] == [(i.name, i.data_type) for i in direct.inputs]
        assert body["class_labels"] == direct.class_labels
        assert body["version"] == 1 and body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert body["size_bytes"] == path.stat().st_size
        assert resp.headers["location"] == f"/api/v1/models/{body['model']}/versions/1"


@pytest.mark.parametrize(
    ("fixture", "kind", "algorithm", "function_type", "labels"),
    [
        ("random_forest", "onnx", "TreeEnsembleClassifier", "classification", [0, 1, 2]),
        ("linear_regression", "onnx", "LinearRegressor", "regression", None),
        ("kmeans", "onnx", "KMeans", "clustering", None),
        ("pca", "onnx", "PCA", "dimensionality_reduction", None),
        ("neural_network", "onnx", "NeuralNetwork", "other", None),
        ("decision_tree", "pmml", "TreeModel", "classification", None),
        ("random_forest", "pmml", "MiningModel", "classification", None),
        ("kmeans", "pmml", "ClusteringModel", "clustering", None),
        ("linear_regression", "pmml", "RegressionModel", "regression", None),
        ("mlp", "pmml", "NeuralNetwork", "classification", None),
    ],
)
async def test_representative_models(
    sqlite_registry: httpx.AsyncClient, pmml_models: dict[str, Path], onnx_models: dict[str, Path],
    fixture: str, kind: str, algorithm: str, function_type: str, labels: list[Any] | None,
) -> None:  # fmt: skip
    files = pmml_models if kind == "pmml" else onnx_models
    if fixture not in files:
        pytest.fail(f"fixture {kind}/{fixture} missing; have {sorted(files)}")
    body = (await upload(sqlite_registry, files[fixture])).json()
    assert (body["algorithm"], body["function_type"]) == (algorithm, function_type)
    if labels is not None:
        assert body["class_labels"] == labels
    if function_type == "classification" and kind == "pmml":
        assert body["targets"] and body["targets"][0]["values"]
    assert all(i["name"] and i["data_type"] for i in body["inputs"])


async def test_versions_aliases_and_download(
    registry: httpx.AsyncClient, onnx_models: dict[str, Path], pmml_models: dict[str, Path]
) -> None:
    first = (await upload(registry, onnx_models["random_forest"], "iris", description="first")).json()
    second = (await upload(registry, pmml_models["decision_tree"], "iris")).json()
    assert (first["version"], second["version"]) == (1, 2)
    assert (await registry.get("/api/v1/models/iris/versions/latest")).json()["version"] == 2

    put = await registry.put("/api/v1/models/iris/aliases/production", json={"version": 1})
    assert put.status_code == 200 and put.json() == {"model": "iris", "alias": "production", "version": 1}
    by_alias = (await registry.get("/api/v1/models/iris/versions/production")).json()
    assert by_alias["version"] == 1 and by_alias["aliases"] == ["production"]
    assert (await registry.put("/api/v1/models/iris/aliases/production", json={"version": 2})).status_code == 200
    assert (await registry.get("/api/v1/models/iris/versions/production")).json()["version"] == 2
    detail = (await registry.get("/api/v1/models/iris")).json()
    assert detail["versions"] == [1, 2] and detail["aliases"] == {"production": 2}
    assert detail["description"] == "first" and detail["latest"]["version"] == 2

    for bad in ("latest", "9lives", "a/b"):
        assert (await registry.put(f"/api/v1/models/iris/aliases/{bad}", json={"version": 1})).status_code in {404, 422}
    assert (await registry.put("/api/v1/models/iris/aliases/x", json={"version": 7})).status_code == 404
    assert (await registry.delete("/api/v1/models/iris/aliases/production")).status_code == 204
    assert (await registry.get("/api/v1/models/iris/versions/production")).status_code == 404

    download = await registry.get("/api/v1/models/iris/versions/1/artifact")
    assert download.status_code == 200 and download.content == onnx_models["random_forest"].read_bytes()
    assert (await registry.get("/api/v1/models/iris/versions/2/artifact")).content == pmml_models[
        "decision_tree"
    ].read_bytes()

    patched = await registry.patch("/api/v1/models/iris", json={"description": "iris classifiers"})
    assert patched.json()["description"] == "iris classifiers"
    listed = (await registry.get("/api/v1/models", params={"limit": 1})).json()
    assert listed["total"] == 1 and listed["items"][0]["latest_version"] == 2
    assert listed["items"][0]["engine"]["name"] == "pmml"


async def test_concurrent_uploads_get_distinct_versions(
    registry: httpx.AsyncClient, onnx_models: dict[str, Path]
) -> None:
    responses = await asyncio.gather(
        *(upload(registry, onnx_models["linear_regression"], "race", force="true") for _ in range(6))
    )
    assert [r.status_code for r in responses] == [201] * 6, [r.text for r in responses]
    assert sorted(r.json()["version"] for r in responses) == [1, 2, 3, 4, 5, 6]


async def test_delete_version_and_model_remove_artifacts(
    registry: httpx.AsyncClient, db_settings: Settings, onnx_models: dict[str, Path]
) -> None:
    await upload(registry, onnx_models["kmeans"], "km")
    await upload(registry, onnx_models["pca"], "km")
    await upload(registry, onnx_models["pca"], "other")  # same file, another model
    assert len(stored_files(db_settings)) == 2
    assert (await registry.delete("/api/v1/models/km/versions/1")).status_code == 204
    assert (await registry.get("/api/v1/models/km/versions/1")).status_code == 404
    assert len(stored_files(db_settings)) == 1
    assert (await registry.delete("/api/v1/models/km")).status_code == 204
    assert (await registry.get("/api/v1/models/km")).status_code == 404
    assert len(stored_files(db_settings)) == 1  # still used by 'other'
    assert (await registry.get("/api/v1/models/other/versions/1/artifact")).status_code == 200
    assert (await registry.delete("/api/v1/models/other")).status_code == 204
    assert stored_files(db_settings) == []


async def test_function_type_override(sqlite_registry: httpx.AsyncClient, onnx_models: dict[str, Path]) -> None:
    declared = await upload(
        sqlite_registry, onnx_models["neural_network"], "net", function_type="dimensionality_reduction"
    )
    assert declared.status_code == 201, declared.text
    assert declared.json()["function_type"] == "dimensionality_reduction"
    wrong = await upload(sqlite_registry, onnx_models["linear_regression"], "lin", function_type="classification")
    assert wrong.status_code == 422
    assert any(e["field"] == "function_type" for e in wrong.json()["errors"])
    unknown = await upload(sqlite_registry, onnx_models["linear_regression"], "lin", function_type="magic")
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "function_type"


async def test_bad_files_are_refused_and_nothing_is_stored(
    sqlite_registry: httpx.AsyncClient, sqlite_settings: Settings, bad_files: dict[str, Path]
) -> None:
    for name, path in bad_files.items():
        resp = await upload(sqlite_registry, path, name="bad")
        assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["detail"], name
    assert (await sqlite_registry.get("/api/v1/models")).json()["total"] == 0
    assert stored_files(sqlite_settings) == []
    assert (await sqlite_registry.get("/health/ready")).status_code == 200


async def test_xxe_never_reads_the_local_file(sqlite_registry: httpx.AsyncClient, bad_files: dict[str, Path]) -> None:
    resp = await upload(sqlite_registry, bad_files["pmml_xxe"], name="xxe")
    assert resp.status_code == 422
    assert "DOCTYPE" in resp.json()["detail"]
    assert "root:" not in resp.text


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "bad\x01name", "-lead", "x" * 129, ""])
async def test_bad_names_are_refused(
    sqlite_registry: httpx.AsyncClient, onnx_models: dict[str, Path], name: str
) -> None:
    resp = await upload(sqlite_registry, onnx_models["linear_regression"], name=name)
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "name"


async def test_upload_without_file_or_not_multipart(sqlite_registry: httpx.AsyncClient) -> None:
    missing = await sqlite_registry.post("/api/v1/models", data={"name": "x"}, files={"other": ("a", b"1")})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "file"
    json_body = await sqlite_registry.post("/api/v1/models", json={"name": "x"})
    assert json_body.status_code == 415


async def test_size_limit_answers_413_and_leaves_nothing(
    sqlite_settings: Settings, onnx_models: dict[str, Path]
) -> None:
    small = sqlite_settings.model_copy(update={"max_upload_bytes": 200})
    async with asgi_client(create_app(small)) as client:
        resp = await upload(client, onnx_models["random_forest"], name="big")
        assert resp.status_code == 413

        sent = 0

        async def two_gigabytes() -> Any:
            nonlocal sent
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
            for _ in range(2048):
                sent += 1
                yield b"\0" * (1024 * 1024)

        declared = await client.post(
            "/api/v1/models",
            content=two_gigabytes(),
            headers={"content-type": "multipart/form-data; boundary=b", "content-length": str(2 * 1024**3)},
        )
        assert declared.status_code == 413
        assert sent < 2048  # refused before reading the body
    assert stored_files(small) == []


async def test_the_same_file_again_answers_its_existing_version_unless_forced(
    registry: httpx.AsyncClient, db_settings: Settings, onnx_models: dict[str, Path]
) -> None:
    first = await upload(registry, onnx_models["random_forest"], "iris")
    assert first.status_code == 201 and first.json()["existing"] is False
    again = await upload(registry, onnx_models["random_forest"], "iris")
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["existing"] is True and body["version"] == 1 and body["sha256"] == first.json()["sha256"]
    assert again.headers["location"] == "/api/v1/models/iris/versions/1"
    assert (await registry.get("/api/v1/models/iris")).json()["versions"] == [1]
    assert len(stored_files(db_settings)) == 1

    forced = await upload(registry, onnx_models["random_forest"], "iris", force="true")
    assert forced.status_code == 201 and forced.json()["version"] == 2 and forced.json()["existing"] is False
    by_query = await registry.post(
        "/api/v1/models",
        params={"force": "true"},
        data={"name": "iris"},
        files={"file": ("rf.onnx", onnx_models["random_forest"].read_bytes())},
    )
    assert by_query.status_code == 201 and by_query.json()["version"] == 3
    # A new file, or the same file under another model or served as another function type, is a new version.
    other = await upload(registry, onnx_models["logistic_regression"], "iris")
    assert other.status_code == 201 and other.json()["version"] == 4
    elsewhere = await upload(registry, onnx_models["random_forest"], "iris-copy")
    assert elsewhere.status_code == 201 and elsewhere.json()["version"] == 1
    as_other = await upload(registry, onnx_models["random_forest"], "iris", function_type="other")
    assert as_other.status_code == 201 and as_other.json()["version"] == 5
    assert (await upload(registry, onnx_models["random_forest"], "iris", function_type="other")).status_code == 200


async def test_hostile_files_are_refused_at_upload(
    sqlite_registry: httpx.AsyncClient, sqlite_settings: Settings, tmp_path: Path
) -> None:
    from tests.fixtures import models

    nested = models.make_pmml_deeply_nested(tmp_path, mebibytes=60)
    with nested.open("rb") as fh:
        resp = await sqlite_registry.post(
            "/api/v1/models", data={"name": "deep"}, files={"file": ("deep.pmml", fh, "application/xml")}
        )
    assert resp.status_code == 413, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["errors"][0]["field"] == "file"
    huge = await upload(sqlite_registry, models.make_onnx_constant_of_shape(tmp_path), name="huge")
    assert huge.status_code == 422, huge.text
    assert "onnx_max_tensor_bytes" in huge.json()["detail"]
    assert (await sqlite_registry.get("/api/v1/models")).json()["total"] == 0
    assert stored_files(sqlite_settings) == []
