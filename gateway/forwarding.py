"""Everything under `/api/v1` the gateway does not answer itself, passed on to the registry (or, for model
test, to the pool-mode inference process) after auth, the path guard and the body limits."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.dataplane import GatewayDataPlane
from gateway.fastroute import principal_of

router = APIRouter()
_SERVICE_VIEW = re.compile(r"^/api/v1/services/[^/]+$")
_INTERNAL_REPLICA_FIELDS = ("pid", "host", "url")
"""What a replica's status says about the internal network: for admin keys only."""


def _plane(request: Request) -> GatewayDataPlane:
    plane: GatewayDataPlane = request.app.state.dataplane
    return plane


def _redacted(response: Response) -> Response:
    """A service's description as a predict key may see it: its replicas without addresses or pids."""
    try:
        data = orjson.loads(bytes(response.body))
    except (orjson.JSONDecodeError, AttributeError):
        return response
    for replica in data.get("replica_list", []) if isinstance(data, dict) else []:
        if isinstance(replica, dict):
            for key in _INTERNAL_REPLICA_FIELDS:
                replica.pop(key, None)
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return Response(orjson.dumps(data), response.status_code, headers)


def _is_admin(principal: Any) -> bool:
    return principal is not None and "admin" in principal.scopes


@router.api_route("/api/v1/models/{name}/versions/{version}/test", methods=["POST"], include_in_schema=False)
async def model_test(request: Request, name: str, version: str) -> Response:
    plane = _plane(request)
    return await plane.upstreams.forward(request, plane.settings.inference_url)


@router.api_route("/api/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def to_registry(request: Request, path: str) -> Response:
    plane = _plane(request)
    response = await plane.upstreams.forward(request, plane.settings.registry_url)
    viewed = request.method == "GET" and response.status_code == 200 and _SERVICE_VIEW.match(request.url.path)
    if viewed and not _is_admin(principal_of(request)):
        response = _redacted(response)
    if request.method != "GET" and response.status_code < 400 and path.startswith(("services", "models")):
        # Read-your-writes: a caller who paused or re-pointed a service sees it on their next predict.
        with contextlib.suppress(Exception):
            await plane.routing.refresh()
    return response
