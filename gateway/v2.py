"""The Open Inference Protocol (KServe V2) over services: existing V2 clients work unmodified.

Errors stay RFC 9457 problem+json and also carry the protocol's own `error` member.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, ORJSONResponse

from gateway.routing import Route
from gateway.v2_codec import infer_response, model_metadata, records_from_infer, server_metadata
from shared.errors import ModelServeError, NotFound, ValidationFailed, field_error

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
P = ParamSpec("P")
R = TypeVar("R")


def _v2_errors(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except ModelServeError as err:
            err.extra.setdefault("error", err.detail)
            raise

    return wrapper


def _check_version(route: Route, version: str | None) -> None:
    if version is not None and str(route.version) != version:
        raise NotFound(f"Service '{route.name}' serves version {route.version}, not {version}")


def _signature(route: Route) -> dict[str, Any]:
    if route.signature is None or route.version is None:
        raise NotFound(f"Service '{route.name}' has no model version to describe")
    return route.signature


async def _known_route(request: Request, name: str) -> Route:
    table = request.app.state.routing
    route = table.get(name)
    if route is None:
        await table.refresh()
        route = table.get(name)
    if route is None:
        raise NotFound(f"Model '{name}' does not exist")
    return route


@router.get("", summary="Server metadata")
async def metadata(request: Request) -> dict[str, Any]:
    return server_metadata(request.app.version)


@router.get("/health/live", summary="Server live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server ready", response_model=None)
async def ready(request: Request) -> JSONResponse:
    is_ready = bool(request.app.state.routing.loaded)
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{name}", summary="Model metadata")
@router.get("/models/{name}/versions/{version}", summary="Model metadata of a version")
@_v2_errors
async def model(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    route = await _known_route(request, name)
    _check_version(route, version)
    return model_metadata(name, route.version or 0, _signature(route))


@router.get("/models/{name}/ready", summary="Model ready", response_model=None)
@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready", response_model=None)
@_v2_errors
async def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
    route = await _known_route(request, name)
    _check_version(route, version)
    is_ready = bool(route.replicas) and not route.paused
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


@router.post("/models/{name}/infer", summary="Inference", response_class=ORJSONResponse)
@router.post("/models/{name}/versions/{version}/infer", summary="Inference on a version", response_class=ORJSONResponse)
@_v2_errors
async def infer(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    # Through the data plane: admission, metrics and the coalescer, as REST predict.
    plane = request.app.state.dataplane
    principal = getattr(request.state, "principal", None)
    signature = _signature(await plane.metadata(name, version))
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed("Invalid JSON", errors=[field_error("body", f"not valid JSON: {exc}")]) from exc
    decoded = records_from_infer(body, signature)
    data = await plane.infer(name, version, decoded.records, principal)
    return infer_response(name, data["version"], decoded, data["predictions"], signature)
