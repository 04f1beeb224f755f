"""An inference process: pool mode (any model version, for model test) or pinned to one service's version."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse, Response
from pydantic import BaseModel

from inference.memory_guard import MemoryWatchdog, limit_data_segment
from inference.payloads import loads_json, records_from_request
from inference.predictor import Predictor, VersionRef
from inference.resolver import VersionResolver
from inference.validation import records_from_body
from shared.app import instrument_app
from shared.artifacts import artifact_store
from shared.errors import BadRequest, ModelServeError, ServiceUnavailable
from shared.metrics import mark_process_up
from shared.settings import Settings

log = logging.getLogger(__name__)


class ModelTestResponse(BaseModel):
    """Predictions in the order of the records sent, with the version that answered and the time it took."""

    model: str
    version: int
    predictions: list[dict[str, Any]]
    warnings: list[str] = []
    timing: dict[str, float]


_TEST_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "object", "properties": {"inputs": {"type": "object"}}, "required": ["inputs"]},
                        {"type": "object", "properties": {"inputs": {"type": "array", "items": {"type": "object"}}}},
                        {"type": "object", "properties": {"columns": {"type": "array"}, "data": {"type": "array"}}},
                    ]
                },
                "example": {"inputs": {"X": [5.1, 3.5, 1.4, 0.2]}},
            },
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


@dataclass(frozen=True)
class Pinned:
    """The one model version a service replica serves."""

    service: str
    model: str
    version: int


class _PinnedState:
    def __init__(self) -> None:
        self.ref: VersionRef | None = None
        self.error: str | None = None
        self.requests = 0


async def _load_pinned(app: FastAPI, pinned: Pinned) -> None:
    state: _PinnedState = app.state.pinned
    try:
        ref = await app.state.resolver.resolve(pinned.model, str(pinned.version))
        await app.state.predictor.runtime(ref)  # load before answering ready
        state.ref = ref
        log.info("replica of %s ready with %s v%d", pinned.service, pinned.model, pinned.version)
    except Exception as exc:
        state.error = exc.detail if isinstance(exc, ModelServeError) else f"{type(exc).__name__}: {exc}"
        log.error("replica of %s cannot load %s v%d: %s", pinned.service, pinned.model, pinned.version, state.error)


def create_app(
    settings: Settings | None = None, pinned: Pinned | None = None, *, own_process: bool | None = None
) -> FastAPI:
    """Pool mode (`pinned` None) serves model test for any version; pinned mode serves one service.

    `own_process` (by default: when called without settings, as uvicorn's factory in a process of its own)
    bounds the process's memory by `replica_max_memory_bytes` (`inference.memory_guard`).
    """
    if own_process is None:
        own_process = settings is None
    settings = settings or Settings()
    if own_process:
        limit_data_segment(settings.replica_max_memory_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = artifact_store(settings)
        app.state.predictor = Predictor(settings, store)
        app.state.resolver = VersionResolver(settings)
        app.state.pinned = _PinnedState()
        loading = asyncio.create_task(_load_pinned(app, pinned)) if pinned else None
        mark_process_up("inference" if pinned is None else "replica")
        watchdog = None
        if own_process:
            watchdog = MemoryWatchdog(settings.replica_max_memory_bytes, settings.replica_memory_check_seconds)
            watchdog.start()
        try:
            yield
        finally:
            if watchdog is not None:
                watchdog.stop()
            if loading is not None:
                loading.cancel()
                await asyncio.gather(loading, return_exceptions=True)
            await app.state.predictor.close()
            await app.state.resolver.aclose()

    app = FastAPI(
        title="modelserve inference", version="0.1.0", lifespan=lifespan, default_response_class=ORJSONResponse
    )
    app.state.settings = settings

    async def artifacts_ready() -> None:
        if settings.artifact_fetch == "shared" and not settings.artifacts_dir.is_dir():
            raise RuntimeError(f"artifact store {settings.artifacts_dir} is missing")

    async def model_ready() -> None:
        state: _PinnedState = app.state.pinned
        if state.error:
            raise RuntimeError(state.error)
        if state.ref is None:
            raise RuntimeError("loading the model")

    checks: dict[str, Any] = {"artifacts": artifacts_ready}
    if pinned is not None:
        checks["model"] = model_ready
    instrument_app(app, "inference", checks, internal_token=settings.internal_token)
    if pinned is not None:
        _add_pinned_routes(app, pinned)

    @app.post(
        "/api/v1/models/{name}/versions/{version}/test",
        response_model=ModelTestResponse,
        tags=["models"],
        summary="Test a model version with JSON records or a CSV/JSON file",
        openapi_extra=_TEST_DOC,
    )
    async def test_model(name: str, version: str, request: Request) -> ModelTestResponse:
        ref = await request.app.state.resolver.resolve(name, version)
        records = await records_from_request(request, ref.description)
        result = await request.app.state.predictor.predict(ref, records)
        return ModelTestResponse(
            model=ref.model,
            version=ref.version,
            predictions=result.predictions,
            warnings=result.warnings,
            timing=result.timing,
        )

    return app


def _add_pinned_routes(app: FastAPI, pinned: Pinned) -> None:
    @app.get("/internal/stats", include_in_schema=False)
    async def stats() -> dict[str, Any]:
        state: _PinnedState = app.state.pinned
        return {
            "service": pinned.service,
            "model": pinned.model,
            "version": pinned.version,
            "ready": state.ref is not None,
            "error": state.error,
            "requests": state.requests,
        }

    @app.post("/predict-many", include_in_schema=False)
    async def predict_many(request: Request) -> Response:
        """Several predict bodies coalesced by the gateway: each gets its own status and body."""
        state: _PinnedState = app.state.pinned
        if state.ref is None:
            raise ServiceUnavailable(state.error or "The model is still loading", headers={"Retry-After": "1"})
        try:
            payload = loads_json(await request.body())
            bodies = payload["requests"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BadRequest("Expected {'requests': [...]}") from exc
        # Checked before anything counts on it being a list (len() of an int would be a 500).
        if not isinstance(bodies, list):
            raise BadRequest("Expected {'requests': [...]}")
        # Each request's own id (the batch has one of its own): a failure is logged under its caller's id.
        request_ids = payload.get("request_ids")
        if not isinstance(request_ids, list) or len(request_ids) != len(bodies):
            request_ids = [None] * len(bodies)
        state.requests += len(bodies)
        ref = state.ref
        parsed: list[list[dict[str, Any]] | Exception] = []
        for body in bodies:
            try:
                parsed.append(records_from_body(body))
            except ModelServeError as err:
                parsed.append(err)
        results = await app.state.predictor.predict_many(ref, parsed)
        responses = []
        for result, request_id in zip(results, request_ids, strict=True):
            if isinstance(result, Exception):
                if isinstance(result, ModelServeError):
                    failure = result
                else:  # not one of ours: logged here, a generic 500 for that caller alone
                    extra = {"request_id": str(request_id)} if request_id else {}
                    log.error("predict failed on %s", pinned.service, exc_info=result, extra=extra)
                    failure = ModelServeError("The prediction failed")
                responses.append({"status": failure.status, "body": failure.to_problem("/predict")})
                continue
            body = {
                "service": pinned.service,
                "model": ref.model,
                "version": ref.version,
                "predictions": result.predictions,
                "warnings": result.warnings,
            }
            responses.append({"status": 200, "body": body})
        # orjson directly: FastAPI's encoder walks every prediction in Python first (the replica's hot path).
        return _json({"responses": responses})

    @app.post("/predict", include_in_schema=False)
    async def predict(request: Request) -> Response:
        state: _PinnedState = app.state.pinned
        if state.ref is None:
            raise ServiceUnavailable(state.error or "The model is still loading", headers={"Retry-After": "1"})
        state.requests += 1
        records = await records_from_request(request, state.ref.description)
        result = await app.state.predictor.predict(state.ref, records)
        return _json(
            {
                "service": pinned.service,
                "model": state.ref.model,
                "version": state.ref.version,
                "predictions": result.predictions,
                "warnings": result.warnings,
            }
        )


def _json(content: Any) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def create_pinned_app() -> FastAPI:
    """Factory for `modelserve inference --service …` (uvicorn factories take no arguments)."""
    service, model, version = os.environ["MODELSERVE_PINNED"].split("\t")
    return create_app(Settings(), Pinned(service, model, int(version)), own_process=True)
