"""`FastRoute`: a FastAPI route that is documented like any other but called without FastAPI's request machinery,
and `HotRoutes`, which hands requests for such routes to them before FastAPI's router layers.

py-spy on the gateway under load showed more CPU in FastAPI's routing, endpoint signature handling (dependency
solving) and its exception and exit-stack layers than in the gateway's own work, and the gateway is what limits
throughput. A `FastRoute` endpoint takes the request and its path parameters and returns a `Response`, parsing
what it needs itself. A `ModelServeError` it raises is answered by `problem_response`, exactly what the app's
handler for it does (`shared.errors.install_error_handlers`); anything else goes up to the app's handlers.
The route stays in FastAPI's table, so the OpenAPI description and the metrics' route template are those of
any route, and `HotRoutes` only selects it earlier: the same route object answers either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.errors import ModelServeError, problem_response

Endpoint = Callable[..., Awaitable[Response]]


def _lean(endpoint: Endpoint) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await endpoint(Request(scope, receive, send), **scope["path_params"])
        except ModelServeError as err:
            response = problem_response(err, scope["path"])
        await response(scope, receive, send)

    return app


class FastRoute(APIRoute):
    """Use as `APIRouter(route_class=FastRoute)`; document query parameters with `openapi_extra`."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self._lean = _lean(endpoint)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # FastAPI calls `handle` on the route it selected (directly or through an included router's context).
        if self.methods and scope["method"] not in self.methods:
            await super().handle(scope, receive, send)  # FastAPI's own 405
            return
        await self._lean(scope, receive, send)


class HotRoutes:
    """Innermost middleware: a request that fully matches one of `routes` is handled by it at once.

    A partial match (the path, another method) and everything else go on to FastAPI, whose router would
    select the very same route for a full match.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = [r for r in routes if isinstance(r, FastRoute)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child = route.matches(scope)
                if match == Match.FULL:
                    scope.update(child)  # path_params and route, as the router sets them
                    await route.handle(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def header(scope: Scope, name: bytes, default: bytes = b"") -> bytes:
    """One request header straight from the ASGI scope (cheaper than building `Headers` on the hot path)."""
    return next((v for k, v in scope["headers"] if k == name), default)


def principal_of(request: Request) -> Any:
    """The verified caller the auth middleware stored in the scope (None on open paths)."""
    state = request.scope.get("state")
    return state.get("principal") if state else None
