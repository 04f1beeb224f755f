"""`FastRoute`: a FastAPI route that is documented like any other but called without FastAPI's request machinery.

py-spy on the gateway under load showed more CPU in FastAPI's endpoint signature handling (dependency solving)
and its exit-stack layers than in the gateway's own work, and the gateway is what limits throughput. A
`FastRoute` endpoint takes the request and its path parameters and returns a `Response`; it parses what it
needs itself. Its errors go through the app's exception handlers like every other route's (one mapping), and
the route stays in FastAPI's table, so the OpenAPI description, the metrics' route template and the order of
routes are those of any route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[..., Awaitable[Response]]


def _lean(endpoint: Endpoint) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            response = await endpoint(request, **scope["path_params"])
            await response(scope, receive, send)

        await wrap_app_handling_exceptions(answer, request)(scope, receive, send)

    return app


class FastRoute(APIRoute):
    """Use as `APIRouter(route_class=FastRoute)`; document query parameters with `openapi_extra`."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.app = _lean(endpoint)


def header(scope: Scope, name: bytes, default: bytes = b"") -> bytes:
    """One request header straight from the ASGI scope (cheaper than building `Headers` on the hot path)."""
    return next((v for k, v in scope["headers"] if k == name), default)


def principal_of(request: Request) -> Any:
    """The verified caller the auth middleware stored in the scope (None on open paths)."""
    state = request.scope.get("state")
    return state.get("principal") if state else None
