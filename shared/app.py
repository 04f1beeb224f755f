"""What every modelserve HTTP process has: problem+json errors, request ids, access logs, metrics, health."""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import INTERNAL_TOKEN_HEADER
from shared.errors import BadRequest, Unauthorized, field_error, install_error_handlers, problem_response
from shared.logging import log_access, request_id_var
from shared.metrics import MetricsMiddleware, render_metrics

ReadyCheck = Callable[[], Awaitable[None]]
"""A dependency probe: returns when the dependency answers, raises otherwise."""

_access_log = logging.getLogger("modelserve.access")
_MAX_REQUEST_ID = 128


def _clean_request_id(raw: str | None) -> str:
    # An incoming id is echoed into logs and headers: keep it short and printable.
    if raw and len(raw) <= _MAX_REQUEST_ID and raw.isprintable() and raw.isascii():
        return raw
    # A correlation id, not a secret: 128 random bits without uuid4's system call per request.
    return f"{random.getrandbits(128):032x}"


QUIET_PATHS = ("/health/", "/metrics")
"""Probes and scrapes: polled all day, neither logged nor counted as traffic."""
ROUTE_HEADER = b"x-modelserve-route"
"""An internal process's answer names the route template that matched (the gateway counts under it)."""


class RequestContextMiddleware:
    """Honours or generates `X-Request-ID`, returns it, and writes one access-log line per request."""

    def __init__(
        self, app: ASGIApp, quiet_paths: tuple[str, ...] = (*QUIET_PATHS, "/internal/"), name_route: bool = False
    ) -> None:
        self.app = app
        self.quiet_paths = quiet_paths
        self.name_route = name_route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = _clean_request_id(raw)
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
                template = getattr(scope.get("route"), "path", None) if self.name_route else None
                if template:
                    message["headers"].append((ROUTE_HEADER, template.encode("latin-1", "replace")))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path: str = scope.get("path", "")
            # Path only: query strings and headers may carry secrets.
            if not path.startswith(self.quiet_paths):
                duration_ms = round((time.perf_counter() - start) * 1000, 2)
                log_access(_access_log, scope.get("method", ""), path, status, duration_ms, rid)
            elif status >= 500 or _access_log.isEnabledFor(logging.DEBUG):
                # Probes and the processes' polling of each other: debug, not hundreds of lines a minute at
                # info; a failing one still shows (503 is "not ready yet", normal while starting).
                level = logging.WARNING if status >= 500 and status != 503 else logging.DEBUG
                duration_ms = round((time.perf_counter() - start) * 1000, 2)
                _access_log.log(level, "%s %s %d", scope.get("method", ""), path, status,
                                extra={"status": status, "duration_ms": duration_ms, "request_id": rid})  # fmt: skip
            request_id_var.reset(token)


_CONTROL = frozenset(chr(c) for c in [*range(0x20), 0x7F])


class PathGuardMiddleware:
    """Refuses (400) a path holding control characters (`%00`, `%0a`, …): no route has one, and past here a NUL
    breaks database drivers and file names, which answered 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _CONTROL.isdisjoint(scope.get("path", "")):
            err = BadRequest(
                "The path holds control characters",
                errors=[field_error("path", "control characters (U+0000-U+001F, U+007F) are not allowed")],
            )
            await problem_response(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def health_router(checks: Mapping[str, ReadyCheck], timeout: float = 3.0) -> APIRouter:
    """`/health/live` (the process answers) and `/health/ready` (every dependency answers)."""
    router = APIRouter(tags=["health"])

    @router.get("/health/live", summary="Liveness")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/health/ready", summary="Readiness", response_model=None)
    async def ready() -> JSONResponse:
        async def run(name: str, check: ReadyCheck) -> tuple[str, str]:
            try:
                await asyncio.wait_for(check(), timeout)
                return name, "ok"
            except Exception as exc:
                return name, f"failing: {type(exc).__name__}: {exc}"[:300]

        results = dict(await asyncio.gather(*(run(n, c) for n, c in checks.items())))
        ok = all(v == "ok" for v in results.values())
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "checks": results}
        if ok:
            return JSONResponse(body)
        problem = {
            "type": "https://modelserve.dev/problems/unavailable",
            "title": "Not ready",
            "status": 503,
            "detail": "; ".join(f"{k}: {v}" for k, v in results.items() if v != "ok"),
            **body,
        }
        return JSONResponse(problem, status_code=503, media_type="application/problem+json")

    return router


class InternalTokenMiddleware:
    """Internal processes answer only callers presenting the shared internal token (health and metrics stay open)."""

    OPEN = ("/health/", "/metrics", "/openapi.json", "/docs")

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(self.OPEN):
            header = INTERNAL_TOKEN_HEADER.lower().encode()
            given = next((v for k, v in scope["headers"] if k == header), b"")
            if not hmac.compare_digest(given, self.token):
                response = problem_response(Unauthorized("This is an internal endpoint"), scope["path"])
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class UserTrafficMetrics(MetricsMiddleware):
    """`MetricsMiddleware` for user traffic: probes and scrapes (`QUIET_PATHS`) are not counted."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(QUIET_PATHS):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def instrument_app(
    app: FastAPI, process: str, checks: Mapping[str, ReadyCheck], *, internal_token: str | None = None
) -> FastAPI:
    """Install the common parts on a process's app (middleware run outermost-last-added)."""
    install_error_handlers(app)
    app.include_router(health_router(checks))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Any:
        return render_metrics()

    if internal_token:
        app.add_middleware(InternalTokenMiddleware, token=internal_token)
    app.add_middleware(UserTrafficMetrics, process=process)
    app.add_middleware(PathGuardMiddleware)
    # Internal processes name their route templates for the gateway's metrics (the public gateway does not).
    app.add_middleware(RequestContextMiddleware, name_route=process != "gateway")
    return app
