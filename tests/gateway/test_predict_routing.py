"""Fast return at the gateway: round robin over ready replicas, retry on a dead one, 503/404 answers.

The registry and the replicas are outside the gateway process: small real HTTP servers on loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from gateway.app import create_app as create_gateway
from shared.settings import Settings
from tests.conftest import ADMIN_KEY, LiveServer, asgi_client, free_port


def _replica(name: str, calls: list[str]) -> FastAPI:
    app = FastAPI()

    def answer(body: Any) -> dict[str, Any]:
        if body.get("inputs") == "bad":
            return {"status": 422, "body": {"type": "x", "title": "Validation failed", "status": 422, "detail": "bad"}}
        return {"status": 200, "body": {"version": 1, "predictions": [{"echo": body, "by": name}], "warnings": []}}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        calls.append(name)
        return dict(answer(await request.json())["body"])

    @app.post("/predict-many")
    async def predict_many(request: Request) -> dict[str, Any]:
        calls.append(name)
        return {"responses": [answer(body) for body in (await request.json())["requests"]]}

    return app


def _registry(routes: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/internal/routes")
    async def internal_routes() -> dict[str, Any]:
        return {"services": routes}

    @app.post("/internal/keys/verify")
    async def verify() -> dict[str, Any]:
        return {"key_id": "admin", "name": "admin", "scopes": ["admin"], "services": None}

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def routes() -> dict[str, Any]:
    return {}


@pytest.fixture
def servers(calls: list[str], routes: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    with (
        LiveServer(_replica("a", calls)) as a,
        LiveServer(_replica("b", calls)) as b,
        LiveServer(_registry(routes)) as reg,
    ):
        yield a.url, b.url, reg.url


@pytest.fixture
async def gateway(settings: Settings, servers: tuple[str, str, str]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_gateway(settings.model_copy(update={"registry_url": servers[2]}))
    async with asgi_client(app, Authorization=f"Bearer {ADMIN_KEY}") as client:
        client.app = app  # type: ignore[attr-defined]  (tests reach the routing table directly)
        yield client


def _route(replicas: list[str], **kw: Any) -> dict[str, Any]:
    return {
        "status": "running",
        "paused": False,
        "model": "m",
        "version": 1,
        "replicas": replicas,
        "signature": None,
    } | kw


async def test_round_robin_and_retry_on_a_dead_replica(
    gateway: httpx.AsyncClient, servers: tuple[str, str, str], routes: dict[str, Any], calls: list[str]
) -> None:
    a, b, _ = servers
    routes["s"] = _route([a, b])
    for _ in range(4):
        resp = await gateway.post("/api/v1/services/s/predict", json={"inputs": {"x": 1}})
        assert resp.status_code == 200
    assert sorted(calls) == ["a", "a", "b", "b"]

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    routes["s"] = _route([dead, b])
    await gateway.app.state.routing.refresh()  # type: ignore[attr-defined]
    calls.clear()
    for _ in range(4):
        assert (await gateway.post("/api/v1/services/s/predict", json={"inputs": {"x": 1}})).status_code == 200
    assert calls == ["b"] * 4


async def test_paused_missing_and_replica_less_services(gateway: httpx.AsyncClient, routes: dict[str, Any]) -> None:
    routes["p"] = _route([], paused=True, status="paused")
    routes["f"] = _route([], status="failed")
    paused = await gateway.post("/api/v1/services/p/predict", json={"inputs": {}})
    assert paused.status_code == 503 and paused.headers["retry-after"] == "5" and "paused" in paused.json()["detail"]
    failed = await gateway.post("/api/v1/services/f/predict", json={"inputs": {}})
    assert failed.status_code == 503 and "failed" in failed.json()["detail"]
    assert (await gateway.post("/api/v1/services/none/predict", json={"inputs": {}})).status_code == 404
    metrics = (await gateway.get("/metrics")).text
    assert 'modelserve_service_requests_total{service="p",status="503"}' in metrics


async def test_all_replicas_dead_is_503(gateway: httpx.AsyncClient, routes: dict[str, Any]) -> None:
    routes["s"] = _route([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"])
    resp = await gateway.post("/api/v1/services/s/predict", json={"inputs": {}})
    assert resp.status_code == 503 and resp.headers["content-type"] == "application/problem+json"


async def test_concurrent_predicts_are_coalesced_each_with_its_own_answer(
    gateway: httpx.AsyncClient, servers: tuple[str, str, str], routes: dict[str, Any], calls: list[str]
) -> None:
    import asyncio

    routes["s"] = _route([servers[0]])  # one replica: one batch in flight at a time
    bodies = [{"inputs": {"i": i}} for i in range(40)] + [{"inputs": "bad"}]
    answers = await asyncio.gather(*(gateway.post("/api/v1/services/s/predict", json=b) for b in bodies))
    assert len(calls) < 40  # coalesced
    for body, answer in zip(bodies[:40], answers[:40], strict=True):
        assert answer.status_code == 200 and answer.json()["predictions"][0]["echo"] == body
    assert answers[40].status_code == 422 and answers[40].headers["content-type"] == "application/problem+json"
    broken = await gateway.post(
        "/api/v1/services/s/predict", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422 and broken.json()["errors"][0]["field"] == "body"


async def test_hot_path_is_counted_traced_and_checked_like_any_request(
    gateway: httpx.AsyncClient, servers: tuple[str, str, str], routes: dict[str, Any], calls: list[str]
) -> None:
    routes["s"] = _route([servers[0]])
    ok = await gateway.post("/api/v1/services/s/predict", json={"inputs": {"x": 1}}, headers={"X-Request-ID": "r-1"})
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "r-1"
    bad = await gateway.post(
        "/api/v1/services/s/predict", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["errors"][0]["field"] == "body"
    anonymous = await gateway.post("/api/v1/services/s/predict", json={}, headers={"Authorization": ""})
    assert anonymous.status_code == 401
    metrics = (await gateway.get("/metrics")).text
    assert 'route="/api/v1/services/{name}/predict"' in metrics and 'status="422"' in metrics
    assert 'modelserve_service_requests_total{service="s",status="200"}' in metrics
