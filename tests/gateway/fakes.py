"""Stand-ins for what lies outside the gateway process: a registry and service replicas, served for real on
loopback ports (tests/gateway/conftest.py starts them). They answer like the real ones on the paths the gateway
calls, and record what reached them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.conftest import ADMIN_KEY

PREDICT_KEY = "msk_testpredict_" + "p" * 40
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SPECIES = ["setosa", "versicolor", "virginica"]
SIGNATURE: dict[str, Any] = {
    "format": "pmml",
    "engine": {"name": "pmml", "version": "1.6", "implementation": "jpmml-evaluator"},
    "algorithm": "TreeModel",
    "function_type": "classification",
    "inputs": [{"name": name, "data_type": "double", "op_type": "continuous"} for name in FEATURES],
    "outputs": [],
    "targets": [{"name": "species", "data_type": "string", "op_type": "categorical", "values": SPECIES}],
    "class_labels": SPECIES,
}
PRINCIPALS = {
    ADMIN_KEY: {"key_id": "admin", "name": "admin", "scopes": ["admin"], "services": None},
    PREDICT_KEY: {"key_id": "p1", "name": "app", "scopes": ["predict"], "services": None},
}


@dataclass
class Seen:
    """What reached the fakes: one entry per call."""

    replica_calls: list[dict[str, Any]] = field(default_factory=list)
    registry_paths: list[str] = field(default_factory=list)


def problem(status: int, detail: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    title = {404: "Not found", 422: "Validation failed"}.get(status, "Error")
    body: dict[str, Any] = {"type": "https://modelserve.dev/problems/x", "title": title, "status": status}
    return body | {"detail": detail} | ({"errors": errors} if errors else {})


def _answer(body: Any) -> tuple[int, dict[str, Any]]:
    """A pinned replica's answer to one predict body: records checked against FEATURES like the real one."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    records = inputs if isinstance(inputs, list) else [inputs]
    for record in records:
        if not isinstance(record, dict):
            return 422, problem(422, "Invalid inputs", [{"field": "inputs", "message": "expected an object"}])
        unknown = sorted(set(record) - set(FEATURES))
        if unknown:
            errors = [{"field": f"inputs.{name}", "message": "unknown field"} for name in unknown]
            return 422, problem(422, f"Invalid inputs: {', '.join(unknown)}", errors)
    predictions = [
        {"label": "setosa", "probabilities": {"setosa": 0.9, "versicolor": 0.05, "virginica": 0.05}} for _ in records
    ]
    return 200, {"service": "iris", "model": "iris", "version": 1, "predictions": predictions, "warnings": []}


def replica(seen: Seen, name: str = "a", delay: float = 0.0) -> FastAPI:
    app = FastAPI()

    def record(request: Request, path: str, request_ids: Any = None) -> None:
        seen.replica_calls.append(
            {
                "replica": name,
                "path": path,
                "request_id": request.headers.get("x-request-id"),
                "principal": request.headers.get("x-modelserve-principal"),
                "request_ids": request_ids,
            }
        )

    @app.post("/predict-many")
    async def predict_many(request: Request) -> dict[str, Any]:
        payload = await request.json()
        record(request, "/predict-many", payload.get("request_ids"))
        if delay:
            await asyncio.sleep(delay)
        answers = [_answer(body) for body in payload["requests"]]
        return {"responses": [{"status": status, "body": body} for status, body in answers]}

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        record(request, "/predict")
        if request.headers.get("content-type", "").startswith("text/csv"):
            rows = (await request.body()).decode().strip().splitlines()[1:]
            body: Any = {"inputs": [dict(zip(FEATURES, map(float, r.split(",")), strict=True)) for r in rows]}
        else:
            body = await request.json()
        status, answer = _answer(body)
        return JSONResponse(
            answer, status, media_type="application/json" if status < 400 else "application/problem+json"
        )

    return app


def route(replicas: list[str], **kw: Any) -> dict[str, Any]:
    """One service as the registry's /internal/routes lists it."""
    base = {"status": "running", "paused": False, "model": "iris", "version": 1, "replicas": replicas}
    return base | {"signature": SIGNATURE} | kw


def registry(routes: dict[str, Any], seen: Seen) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def remember(request: Request, call_next: Any) -> Any:
        if request.url.path != "/internal/routes":  # polled all the time by the routing table
            seen.registry_paths.append(request.url.path)
        return await call_next(request)

    @app.get("/internal/routes")
    async def internal_routes() -> dict[str, Any]:
        return {"services": routes}

    @app.post("/internal/keys/verify")
    async def verify(request: Request) -> JSONResponse:
        principal = PRINCIPALS.get((await request.json())["key"])
        if principal is None:
            return JSONResponse(problem(401, "Unknown or revoked API key"), 401)
        return JSONResponse(principal)

    @app.get("/internal/{anything:path}")
    async def internal(anything: str) -> dict[str, str]:
        return {"secret": "internal data"}

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v1/services/{name}")
    async def service(name: str) -> JSONResponse:
        if name not in routes:
            return JSONResponse(problem(404, f"Service '{name}' does not exist"), 404)
        replicas = [
            {"id": f"r{i}", "status": "ready", "version": 1, "pid": 4242 + i, "host": "127.0.0.1", "url": url}
            for i, url in enumerate(routes[name]["replicas"])
        ]
        return JSONResponse({"name": name, "status": routes[name]["status"], "replica_list": replicas})

    @app.post("/api/v1/keys")
    async def create_key(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    return app
