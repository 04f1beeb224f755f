"""The Open Inference Protocol (KServe V2) over services, REST side: existing V2 clients work unmodified.

Both transports, these routes and the gRPC servicer (`gateway.v2_grpc`), call the same functions here:
`infer` for inference, `known_route`/`signature` for metadata. Errors stay RFC 9457 problem+json and
carry the protocol's own `error` member (`shared.errors` adds it on every /v2 path), which is what
tritonclient reads.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, ORJSONResponse, Response

from gateway import v2_binary, v2_repository, v2_stats
from gateway.routing import Route
from gateway.v2_codec import model_metadata, records_from_infer, server_metadata
from gateway.v2_outputs import infer_response
from shared.auth import Principal
from shared.errors import NotFound

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
_COMPRESS_FROM = 1024
"""Answers smaller than this go uncompressed whatever Accept-Encoding says (HTTP allows it)."""
_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": {
                    "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
                },
                "schema": {"type": "object", "description": "A V2 inference request (binary extension allowed)"},
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "description": "JSON header then tensor bytes"}
            },
        },
    }
}


def _json_body(properties: dict[str, Any]) -> dict[str, Any]:
    """An optional JSON request body of these properties, for the OpenAPI document."""
    schema = {"type": "object", "properties": properties}
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": schema}}}}


def check_version(route: Route, version: str | None) -> None:
    if version not in (None, "") and str(route.version) != version:
        raise NotFound(f"Service '{route.name}' serves version {route.version}, not {version}")


def signature(route: Route) -> dict[str, Any]:
    if route.signature is None or route.version is None:
        raise NotFound(f"Service '{route.name}' has no model version to describe")
    return route.signature


async def known_route(app: FastAPI, name: str, version: str | None = None) -> Route:
    """The service `name` (refreshing the table once before saying it does not exist), at `version` if given."""
    table = app.state.routing
    route = table.get(name)
    if route is None:
        await table.refresh()
        route = table.get(name)
    if route is None:
        raise NotFound(f"Model '{name}' does not exist")
    check_version(route, version)
    return route


async def infer(
    app: FastAPI, name: str, version: str | None, body: dict[str, Any], principal: Principal | None
) -> dict[str, Any]:
    """One V2 inference: `body` is the request in its JSON form (binary tensors already decoded to `data`),
    the answer is the response in its JSON form. REST and gRPC both come here; the records go through the data
    plane (admission, the predict coalescer, service metrics) exactly as a REST predict does."""
    start, ok, rows = time.perf_counter(), False, 0
    plane = app.state.dataplane
    route = await plane.serving_route(name)  # 404 unknown, 503 paused or not ready: before the body is judged
    check_version(route, version)
    try:
        model = signature(route)
        decoded = records_from_infer(body, model)
        rows = len(decoded.records)
        data = await plane.infer(name, version, decoded.records, principal)
        response = infer_response(name, data["version"], decoded, data["predictions"], model)
        ok = True
        return response
    finally:
        v2_stats.record(name, route.version, ok, time.perf_counter() - start, rows)


async def allowed_versions(app: FastAPI, principal: Principal | None) -> dict[str, int | None]:
    """Every service the caller may use, with the version it serves (fresh from the registry)."""
    await app.state.routing.refresh()
    routes = app.state.routing.routes
    return {n: r.version for n, r in routes.items() if principal is None or principal.allows("predict", n)}


def principal_of(request: Request) -> Principal | None:
    return getattr(request.state, "principal", None)


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


@router.get("/models/stats", summary="Inference statistics of every model")
async def all_stats(request: Request) -> dict[str, Any]:
    wanted = await allowed_versions(request.app, principal_of(request))
    return {"model_stats": v2_stats.model_statistics(wanted)}


@router.get("/models/{name}", summary="Model metadata")
@router.get("/models/{name}/versions/{version}", summary="Model metadata of a version")
async def model(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    route = await known_route(request.app, name, version)
    return model_metadata(name, route.version or 0, signature(route))


@router.get("/models/{name}/ready", summary="Model ready", response_model=None)
@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready", response_model=None)
async def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
    route = await known_route(request.app, name, version)
    is_ready = bool(route.replicas) and not route.paused
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{name}/config", summary="Model configuration (Triton's)")
@router.get("/models/{name}/versions/{version}/config", summary="Model configuration of a version")
async def model_config(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    route = await known_route(request.app, name, version)
    return v2_repository.model_config(name, route.version or 0, signature(route))


@router.get("/models/{name}/stats", summary="Inference statistics")
@router.get("/models/{name}/versions/{version}/stats", summary="Inference statistics of a version")
async def model_stats(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    route = await known_route(request.app, name, version)
    return {"model_stats": v2_stats.model_statistics({name: route.version})}


@router.post("/models/{name}/infer", summary="Inference", response_class=ORJSONResponse, openapi_extra=_INFER_DOC)
@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on a version",
    response_class=ORJSONResponse,
    openapi_extra=_INFER_DOC,
)
async def infer_route(request: Request, name: str, version: str | None = None) -> Response:
    settings = request.app.state.settings
    raw = v2_binary.decode_content(
        await request.body(), request.headers.get("content-encoding"), settings.v2_max_decompressed_bytes
    )
    body = v2_binary.split_request(raw, request.headers.get(v2_binary.HEADER))
    default, chosen = v2_binary.binary_outputs(body)
    answer = await infer(request.app, name, version, body, principal_of(request))
    content, header_length = v2_binary.encode_response(answer, default, chosen)
    headers = {} if header_length is None else {v2_binary.HEADER: str(header_length)}
    encoding = v2_binary.accepted_encoding(request.headers.get("accept-encoding"))
    if encoding is not None and len(content) >= _COMPRESS_FROM:
        content = v2_binary.encode_content(content, encoding)
        headers |= {"Content-Encoding": encoding, "Vary": "Accept-Encoding"}
    media = "application/json" if header_length is None else "application/octet-stream"
    return Response(content, media_type=media, headers=headers)


@router.post("/repository/index", summary="Model repository index", openapi_extra=_json_body(
    {"ready": {"type": "boolean", "description": "only the models ready to serve"}}))  # fmt: skip
async def repository_index(request: Request) -> list[dict[str, Any]]:
    raw = await request.body()
    body = v2_binary.split_request(raw, None) if raw.strip() else {}
    ready_only = isinstance(body, dict) and body.get("ready") is True
    await request.app.state.routing.refresh()
    return v2_repository.index(request.app, principal_of(request), ready_only)


async def _parameters(request: Request) -> Any:
    raw = await request.body()
    body = v2_binary.split_request(raw, None) if raw.strip() else {}
    return body.get("parameters") if isinstance(body, dict) else None


@router.post(
    "/repository/models/{name}/load",
    summary="Load a model: start its service and wait until it serves",
    openapi_extra=_json_body({"parameters": {"type": "object"}}),
)
async def repository_load(request: Request, name: str) -> dict[str, Any]:
    await v2_repository.load(request.app, name, await _parameters(request), principal_of(request))
    return {}


@router.post(
    "/repository/models/{name}/unload",
    summary="Unload a model: pause its service",
    openapi_extra=_json_body({"parameters": {"type": "object"}}),
)
async def repository_unload(request: Request, name: str) -> dict[str, Any]:
    await _parameters(request)
    await v2_repository.unload(request.app, name, principal_of(request))
    return {}
