"""`Idempotency-Key` on model uploads: a retry answers the version the first try made, never a second copy."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.app import create_app
from shared.settings import Settings
from tests.conftest import asgi_client


async def _upload(
    client: httpx.AsyncClient, path: Path, key: str | None, name: str = "m", force: bool = False
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
    data = {"name": name} | ({"force": "true"} if force else {})
    return await client.post("/api/v1/models", data=data, files=files, headers=headers)


async def test_a_retried_model_upload_answers_the_first_version(
    registry: httpx.AsyncClient, onnx_models: dict[str, Path]
) -> None:
    first = await _upload(registry, onnx_models["random_forest"], "model-1")
    assert first.status_code == 201, first.text
    again = await _upload(registry, onnx_models["random_forest"], "model-1")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["location"] == "/api/v1/models/m/versions/1"
    versions = (await registry.get("/api/v1/models/m/versions")).json()
    assert [v["version"] for v in (versions["items"] if isinstance(versions, dict) else versions)] == [1]
    other = await _upload(registry, onnx_models["linear_regression"], "model-1")
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "header.Idempotency-Key"
    # A new key is a new upload: the same file answers its existing version (issue 12), unless forced.
    same = await _upload(registry, onnx_models["random_forest"], "model-2")
    assert same.status_code == 200 and same.json()["existing"] is True and same.json()["version"] == 1
    assert (await _upload(registry, onnx_models["random_forest"], "model-3", force=True)).json()["version"] == 2
    assert (await _upload(registry, onnx_models["random_forest"], None, force=True)).json()["version"] == 3


async def test_a_retry_while_the_first_model_upload_is_inspected_waits_its_turn(
    settings: Settings, onnx_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from registry import models_api

    original = models_api.inspect_artifact
    calls: list[int] = []

    def slow(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(models_api, "inspect_artifact", slow)
    path = onnx_models["random_forest"]
    async with asgi_client(create_app(settings)) as client:
        first = asyncio.create_task(_upload(client, path, "slow-1"))
        await asyncio.sleep(0.5)
        busy = await _upload(client, path, "slow-1")
        assert busy.status_code == 409 and busy.headers["retry-after"], busy.text
        assert (await first).status_code == 201
        retried = await _upload(client, path, "slow-1")
        assert retried.status_code == 201 and retried.json()["version"] == 1
        assert calls == [1]  # the retries were never inspected, nor stored


async def test_a_failed_upload_frees_its_key(
    registry: httpx.AsyncClient, tmp_path: Path, onnx_models: dict[str, Path]
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert (await _upload(registry, broken, "k")).status_code == 422
    assert (await _upload(registry, broken, "k")).status_code == 422  # tried again, not "in progress"
