"""The public gateway: auth, request ids, OpenAPI, /api/v1 and /v2, metrics for the whole platform."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client.core import Metric

from gateway import api_v1, daas, forwarding, v2, v2_grpc
from gateway.auth import AuthMiddleware
from gateway.console import install_console, swagger_page
from gateway.dataplane import GatewayDataPlane
from gateway.fastroute import HotRoutes
from gateway.guards import BodyLimit, PathGuard
from gateway.openapi import OpenApiMerger
from shared.app import instrument_app
from shared.heartbeat import live_roles
from shared.logging import configure_logging
from shared.metrics import gauge_family, mark_process_up, render_metrics
from shared.redis import QUEUES
from shared.settings import Settings

log = logging.getLogger(__name__)
HEARTBEAT_ROLES = ("worker", "scheduler")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if not logging.getLogger().handlers:  # a uvicorn worker process: the parent's logging set-up did not come along
        configure_logging("gateway", settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        plane = GatewayDataPlane(settings)
        app.state.dataplane = plane
        # The data plane's parts, for code that reaches them by their former names.
        app.state.upstreams, app.state.routing, app.state.keys = plane.upstreams, plane.routing, plane.keys
        app.state.redis = plane.redis
        plane.event_handlers.extend(getattr(app.state, "event_handlers", []))
        app.state.event_handlers = plane.event_handlers
        await plane.start()
        mark_process_up("gateway")
        grpc_server = await v2_grpc.start_server(app, settings)
        try:
            yield
        finally:
            await v2_grpc.stop_server(grpc_server)
            await plane.close()

    app = FastAPI(
        title="modelserve",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url=None,  # served below: merged with the registry's paths
        docs_url=None,
    )
    app.state.settings = settings
    merger = OpenApiMerger(app)

    async def registry_ready() -> None:
        await app.state.dataplane.upstreams.call_json("GET", f"{settings.registry_url}/health/ready")

    async def inference_ready() -> None:
        await app.state.dataplane.upstreams.call_json("GET", f"{settings.inference_url}/health/ready")

    async def redis_ready() -> None:
        await app.state.dataplane.redis.ping()

    def heartbeat_ready(role: str) -> Any:
        async def check() -> None:
            if role not in await live_roles(app.state.dataplane.redis):  # one HGETALL, never a key scan
                raise RuntimeError(f"no live {role} (no heartbeat in Redis)")

        return check

    checks = {"registry": registry_ready, "inference": inference_ready, "redis": redis_ready}
    checks |= {role: heartbeat_ready(role) for role in HEARTBEAT_ROLES}
    # Added first so they run inside the request-id and metrics middleware: rejections are logged and counted.
    app.add_middleware(HotRoutes, routes=api_v1.router.routes)  # innermost: the hot paths skip the router layers
    app.add_middleware(BodyLimit, settings=settings)  # after auth (no key, no body read)
    app.add_middleware(AuthMiddleware, keys=lambda: app.state.dataplane.keys)
    app.add_middleware(PathGuard)  # before auth: a traversal is refused whoever sends it
    # The hot paths first: the router tries routes in order.
    app.include_router(api_v1.router)
    instrument_app(app, "gateway", checks)
    # The app-level /metrics from instrument_app is replaced by one that adds queue depths.
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/metrics"]

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        depths = await _queue_depths(app)

        def extra() -> Iterable[Metric]:
            yield gauge_family(
                "modelserve_queue_depth", "Jobs waiting in each RQ queue.", ["queue"], [([q], d) for q, d in depths]
            )

        return render_metrics(extra)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        docs = []
        for base in (settings.registry_url, settings.inference_url):
            with contextlib.suppress(Exception):
                docs.append(await app.state.dataplane.upstreams.call_json("GET", f"{base}/openapi.json", timeout=5))
        return JSONResponse(await merger.document(docs))

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> Response:
        return swagger_page("/openapi.json", "modelserve API")

    app.include_router(api_v1.extra_router)
    app.include_router(v2.router)
    app.include_router(daas.router)
    install_console(app)
    app.include_router(forwarding.router)  # last: its catch-all takes what no route above matched

    return app


async def _queue_depths(app: FastAPI) -> list[tuple[str, float]]:
    try:
        pipe = app.state.dataplane.redis.pipeline()
        for queue in QUEUES:
            pipe.llen(f"rq:queue:{queue}")
        return list(zip(QUEUES, await pipe.execute(), strict=True))
    except Exception:
        log.warning("could not read queue depths", exc_info=True)
        return []
