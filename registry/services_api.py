"""`/api/v1/services`: deploy a model version as a named service; pause, start, scale, restart replicas."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlmodel import Session

from registry.catalog import ModelCatalog
from registry.database import SessionDep
from registry.events import publish_event
from registry.schemas import Page
from registry.services import ServiceCreate, ServiceManager, ServicePatch, ServicePublic, services_using
from shared.errors import ValidationFailed, field_error
from shared.paging import Limit, Offset
from shared.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/services", tags=["services"])
internal_router = APIRouter(prefix="/internal", include_in_schema=False)


def get_manager(request: Request, session: SessionDep) -> ServiceManager:
    catalog = ModelCatalog(session, request.app.state.store, services_using)
    return ServiceManager(session, catalog, request.app.state.backend)


ManagerDep = Annotated[ServiceManager, Depends(get_manager)]


async def apply_service(request: Request, manager: ServiceManager, name: str) -> None:
    """Hand the service's desired state to the backend and tell gateways."""
    row = manager.get_row(name)
    spec = manager.spec(row)
    if spec is not None:
        await request.app.state.backend.apply(spec)
    await publish_event(request.app, "service", name)


_WAIT_POLL_SECONDS = 0.2


@router.post(
    "",
    status_code=201,
    response_model=ServicePublic,
    summary="Deploy a model version as a service",
    description="With `?wait=<seconds>` the answer comes once every replica is ready (status `running`), once "
    "the service failed, or when the wait ends (then still `starting`): a predict right after it does not meet "
    "a 503. At most `MODELSERVE_SERVICE_WAIT_MAX_SECONDS`.",
)
async def create_service(
    body: ServiceCreate,
    request: Request,
    response: Response,
    manager: ManagerDep,
    wait: Annotated[float, Query(ge=0, description="Seconds to wait for every replica to be ready")] = 0,
) -> ServicePublic:
    settings: Settings = request.app.state.settings
    if wait > settings.service_wait_max_seconds:
        raise ValidationFailed(
            "wait too long",
            errors=[field_error("wait", f"at most {settings.service_wait_max_seconds:g} seconds", received=wait)],
        )
    row = manager.create(body)
    await apply_service(request, manager, row.name)
    response.headers["Location"] = f"/api/v1/services/{row.name}"
    log.info("service created", extra={"service": row.name, "model": body.model})
    public = manager.public(row)
    deadline = time.monotonic() + wait
    while not _settled(public) and time.monotonic() < deadline:
        await asyncio.sleep(_WAIT_POLL_SECONDS)
        public = manager.public(row)
    if wait and public.status == "running":
        await publish_event(request.app, "service", row.name)  # gateways re-read their routes now, not in 5 s
    return public


def _settled(public: ServicePublic) -> bool:
    return public.status == "failed" or (public.status == "running" and public.ready_replicas >= public.replicas)


@router.get("", response_model=Page[ServicePublic], summary="List services with their replicas")
def list_services(manager: ManagerDep, limit: Limit = 50, offset: Offset = 0) -> Page[ServicePublic]:
    rows = manager.list_rows()
    items = [manager.public(row) for row in rows[offset : offset + limit]]
    return Page(items=items, total=len(rows), limit=limit, offset=offset)


@router.get("/{name}", response_model=ServicePublic, summary="Show a service, its status and replicas")
def get_service(name: str, manager: ManagerDep) -> ServicePublic:
    return manager.public(manager.get_row(name))


@router.patch("/{name}", response_model=ServicePublic, summary="Scale, change version/alias or reservations")
async def patch_service(name: str, body: ServicePatch, request: Request, manager: ManagerDep) -> ServicePublic:
    row = manager.update(name, body)
    await apply_service(request, manager, name)
    return manager.public(row)


@router.post("/{name}/pause", response_model=ServicePublic, summary="Stop the replicas; predict answers 503")
async def pause_service(name: str, request: Request, manager: ManagerDep) -> ServicePublic:
    row = manager.set_paused(name, True)
    await apply_service(request, manager, name)
    return manager.public(row)


@router.post("/{name}/start", response_model=ServicePublic, summary="Start a paused service")
async def start_service(name: str, request: Request, manager: ManagerDep) -> ServicePublic:
    row = manager.set_paused(name, False)
    await apply_service(request, manager, name)
    return manager.public(row)


@router.delete("/{name}", status_code=204, summary="Delete a service and stop its replicas")
async def delete_service(name: str, request: Request, manager: ManagerDep) -> Response:
    manager.delete(name)
    await request.app.state.backend.remove(name)
    await publish_event(request.app, "service", name)
    return Response(status_code=204)


@router.post("/{name}/replicas/{replica_id}/restart", response_model=ServicePublic, summary="Restart one replica")
async def restart_replica(name: str, replica_id: str, request: Request, manager: ManagerDep) -> ServicePublic:
    row = manager.get_row(name)
    await request.app.state.backend.restart_replica(name, replica_id)
    return manager.public(row)


@internal_router.get("/routes")
def routes(manager: ManagerDep) -> dict[str, Any]:
    return {"services": manager.routes()}


async def apply_all(request_app: Any) -> None:
    """At start: hand every stored service to the backend (replicas come back after a restart)."""
    with Session(request_app.state.engine) as session:
        catalog = ModelCatalog(session, request_app.state.store, services_using)
        manager = ServiceManager(session, catalog, request_app.state.backend)
        for row in manager.list_rows():
            spec = manager.spec(row)
            if spec is not None:
                await request_app.state.backend.apply(spec)


async def roll_followers(request: Request, session: Session, model: str) -> None:
    """An alias of `model` moved: services following it converge to the version it points at now."""
    catalog = ModelCatalog(session, request.app.state.store, services_using)
    manager = ServiceManager(session, catalog, request.app.state.backend)
    for row in manager.following(model):
        await apply_service(request, manager, row.name)
