"""A replica pinned to one service version, over HTTP: malformed coalesced bodies are 4xx, never 500."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from inference.app import Pinned
from inference.app import create_app as create_inference
from registry.app import create_app as create_registry
from shared.settings import Settings
from tests.conftest import LiveServer, asgi_client

IRIS = {"X": [5.1, 3.5, 1.4, 0.2]}


@pytest.fixture
def registry_server(settings: Settings, onnx_models: dict[str, Path]) -> Iterator[str]:
    with LiveServer(create_registry(settings)) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        path = onnx_models["random_forest"]
        resp = client.post("/api/v1/models", data={"name": "rf"}, files={"file": (path.name, path.read_bytes())})
        assert resp.status_code == 201, resp.text
        yield server.url


@pytest.fixture
async def replica(settings: Settings, registry_server: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_inference(settings.model_copy(update={"registry_url": registry_server}), Pinned("iris", "rf", 1))
    async with asgi_client(app) as client:
        for _ in range(600):  # the model loads in the background; ready once it has
            if (await client.get("/internal/stats")).json()["ready"]:
                break
            await asyncio.sleep(0.1)
        yield client


@pytest.mark.parametrize("requests", [5, "abc", {"a": 1}, None])
async def test_predict_many_refuses_a_non_list_before_counting_it(replica: httpx.AsyncClient, requests: object) -> None:
    before = (await replica.get("/internal/stats")).json()["requests"]
    resp = await replica.post("/predict-many", json={"requests": requests})
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert (await replica.get("/internal/stats")).json()["requests"] == before


async def test_predict_many_answers_each_body(replica: httpx.AsyncClient) -> None:
    resp = await replica.post("/predict-many", json={"requests": [{"inputs": IRIS}, {"nope": 1}]})
    assert resp.status_code == 200, resp.text
    first, second = resp.json()["responses"]
    assert first["status"] == 200 and first["body"]["predictions"][0]["label"] == 0
    assert second["status"] == 422


async def test_predict_accepts_python_json_nan(replica: httpx.AsyncClient) -> None:
    resp = await replica.post(
        "/predict", content=b'{"inputs": {"X": [NaN, 3.5, 1.4, 0.2]}}', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 200, resp.text
    many = await replica.post(
        "/predict-many",
        content=b'{"requests": [{"inputs": {"X": [5.1, Infinity, 1.4, 0.2]}}]}',
        headers={"content-type": "application/json"},
    )
    assert many.status_code == 200 and many.json()["responses"][0]["status"] == 200, many.text
