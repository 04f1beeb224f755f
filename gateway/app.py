"""The public gateway: auth, request ids, OpenAPI, /api/v1 and /v2, metrics for the whole platform."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client.core import Metric

from gateway import async_jobs, daas, services, v2
from gateway.auth import AuthMiddleware, KeyCache
from gateway.console import install_console, swagger_page
from gateway.fastlane import FastLane
from gateway.openapi import OpenApiMerger
from gateway.routing import RoutingTable
from gateway.upstream import Upstreams
from shared.app import instrument_app
from shared.auth import Principal
from shared.jobstore import DONE_CHANNEL, SUBMIT_LUA
from shared.logging import configure_logging
from shared.metrics import gauge_family, mark_process_up, render_metrics
from shared.redis import EVENTS_CHANNEL, QUEUES, async_redis, sync_redis
from shared.settings import Settings
from shared.tasks import stop_task

log = logging.getLogger(__name__)
HEARTBEAT_ROLES = ("worker", "scheduler")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if not logging.getLogger().handlers:  # a uvicorn worker process: the parent's logging set-up did not come along
        configure_logging("gateway", settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstreams = Upstreams(settings)
        app.state.upstreams = upstreams
        app.state.keys = KeyCache(lambda key: _verify_key(upstreams, key))
        app.state.redis = async_redis(settings)
        app.state.submit_script = app.state.redis.register_script(SUBMIT_LUA)
        app.state.routing = RoutingTable(upstreams, settings.registry_url)
        app.state.routing.start()
        app.state.predict_coalescers = {}
        app.state.job_waiters = async_jobs.JobWaiters()
        app.state.coalescer = async_jobs.Coalescer(settings, lambda: sync_client)
        sync_client = sync_redis(settings)
        app.state.stopping = asyncio.Event()
        listener = asyncio.create_task(_listen_events(app))
        mark_process_up("gateway")
        try:
            yield
        finally:
            app.state.stopping.set()
            await stop_task(listener)
            await app.state.coalescer.close()
            sync_client.close()
            await app.state.routing.close()
            await upstreams.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(app.state.redis.aclose(), 2)

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
        await app.state.upstreams.call_json("GET", f"{settings.registry_url}/health/ready")

    async def inference_ready() -> None:
        await app.state.upstreams.call_json("GET", f"{settings.inference_url}/health/ready")

    async def redis_ready() -> None:
        await app.state.redis.ping()

    def heartbeat_ready(role: str) -> Any:
        async def check() -> None:
            async for _ in app.state.redis.scan_iter(match=f"modelserve:heartbeat:{role}:*", count=100):
                return
            raise RuntimeError(f"no live {role} (no heartbeat in Redis)")

        return check

    checks = {"registry": registry_ready, "inference": inference_ready, "redis": redis_ready}
    checks |= {role: heartbeat_ready(role) for role in HEARTBEAT_ROLES}
    # Added first so it runs inside the request-id and metrics middleware: rejections are logged and counted.
    app.add_middleware(FastLane)  # innermost: after auth, logging and metrics
    app.add_middleware(AuthMiddleware, keys=lambda: app.state.keys)
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
                docs.append(await app.state.upstreams.call_json("GET", f"{base}/openapi.json", timeout=5))
        return JSONResponse(await merger.document(docs))

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> Response:
        return swagger_page("/openapi.json", "modelserve API")

    app.include_router(services.router)
    app.include_router(v2.router)
    app.include_router(async_jobs.router)
    app.include_router(daas.router)
    install_console(app)

    @app.api_route("/api/v1/models/{name}/versions/{version}/test", methods=["POST"], include_in_schema=False)
    async def model_test(request: Request, name: str, version: str) -> Response:
        return await app.state.upstreams.forward(request, settings.inference_url)

    @app.api_route("/api/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def to_registry(request: Request, path: str) -> Response:
        response = await app.state.upstreams.forward(request, settings.registry_url)
        if request.method != "GET" and response.status_code < 400 and path.startswith(("services", "models")):
            # Read-your-writes: a caller who paused or re-pointed a service sees it on their next predict.
            with contextlib.suppress(Exception):
                await app.state.routing.refresh()
        return response

    return app


async def _verify_key(upstreams: Upstreams, key: str) -> Principal:
    data = await upstreams.call_json(
        "POST", f"{upstreams.settings.registry_url}/internal/keys/verify", json={"key": key}
    )
    return Principal.model_validate(data)


async def _queue_depths(app: FastAPI) -> list[tuple[str, float]]:
    try:
        pipe = app.state.redis.pipeline()
        for queue in QUEUES:
            pipe.llen(f"rq:queue:{queue}")
        return list(zip(QUEUES, await pipe.execute(), strict=True))
    except Exception:
        log.warning("could not read queue depths", exc_info=True)
        return []


async def _listen_events(app: FastAPI) -> None:
    """Invalidate caches on registry change events; reconnect when Redis goes away."""
    # redis-py may turn a cancel that lands mid-read into ConnectionError: the stop flag ends the loop regardless.
    while not app.state.stopping.is_set():
        pubsub = app.state.redis.pubsub()
        try:
            await pubsub.subscribe(EVENTS_CHANNEL, DONE_CHANNEL)
            # Anything cached before the subscription may be stale.
            app.state.keys.clear()
            app.state.routing.invalidate()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                if message.get("channel") in (DONE_CHANNEL, DONE_CHANNEL.encode()):
                    app.state.job_waiters.wake([str(i) for i in orjson.loads(message["data"])])
                    continue
                event = orjson.loads(message["data"])
                if event.get("kind") == "key":
                    app.state.keys.clear()
                elif event.get("kind") in {"service", "alias", "model"}:
                    app.state.routing.invalidate()
                for handler in getattr(app.state, "event_handlers", []):
                    handler(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            if app.state.stopping.is_set():
                return
            log.warning("event listener lost Redis; retrying", exc_info=True)
            await asyncio.sleep(1)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1)
