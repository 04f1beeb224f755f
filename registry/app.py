"""The registry process: owns the database and the artifact store, answers management calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import text
from sqlmodel import Session

from registry import artifacts_api, batch_jobs, batch_jobs_api, datasets_api, keys, models_api, script_gen, services_api
from registry.database import migrate
from registry.deployment import resolve_backend
from registry.events import publish_event
from registry.services import services_using
from shared.app import instrument_app
from shared.artifacts import LocalArtifactStore
from shared.db import create_db_engine
from shared.metrics import mark_process_up
from shared.redis import async_redis
from shared.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_db_engine(settings.effective_database_url)
        migrate(engine)
        if settings.admin_key:
            # The environment's admin key is the source of truth on every start (rotation included).
            with Session(engine) as session:
                keys.ensure_admin_key(session, settings)
        app.state.engine = engine
        app.state.store = LocalArtifactStore(settings.artifacts_dir)
        app.state.backend = resolve_backend(settings)
        app.state.redis = async_redis(settings) if settings.redis_url else None
        mark_process_up("registry")
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()

        def on_change(name: str) -> None:
            task = loop.create_task(publish_event(app, "service", name))
            pending.add(task)
            task.add_done_callback(pending.discard)

        await app.state.backend.start(on_change)
        await services_api.apply_all(app)
        if settings.redis_url:
            await asyncio.to_thread(batch_jobs_api.resync_schedules, engine, settings)
        try:
            yield
        finally:
            await app.state.backend.close()
            if app.state.redis is not None:
                await app.state.redis.aclose()
            engine.dispose()

    app = FastAPI(title="modelserve registry", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.usage_check = services_using
    app.state.dataset_usage = batch_jobs.dataset_usage

    async def database_ready() -> None:
        with app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def redis_ready() -> None:
        if app.state.redis is not None:
            await app.state.redis.ping()

    instrument_app(
        app, "registry", {"database": database_ready, "redis": redis_ready}, internal_token=settings.internal_token
    )
    app.include_router(keys.internal_router)
    app.include_router(artifacts_api.internal_router)
    app.include_router(keys.router)
    app.include_router(models_api.router)
    app.include_router(services_api.router)
    app.include_router(services_api.internal_router)
    app.include_router(datasets_api.router)
    app.include_router(datasets_api.internal_router)
    app.include_router(script_gen.router)
    app.include_router(batch_jobs_api.router)
    app.include_router(batch_jobs_api.internal_router)
    return app
