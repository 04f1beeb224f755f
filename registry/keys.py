"""API keys: bootstrap admin key, verification for the gateway, and the admin CRUD at /api/v1/keys."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlmodel import Session, col, func, select

from registry.database import SessionDep
from registry.events import publish_event
from registry.schemas import Page
from registry.tables import ApiKey, ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, utcnow
from shared.auth import Principal, generate_key, hash_key
from shared.errors import Conflict, NotFound, Unauthorized
from shared.paging import Limit, Offset
from shared.settings import Settings

log = logging.getLogger(__name__)
BOOTSTRAP_ID = "admin"


def ensure_admin_key(session: Session, settings: Settings) -> str | None:
    """Make sure an admin key exists; returns a newly generated secret (to print once) or None."""
    bootstrap = session.get(ApiKey, BOOTSTRAP_ID)
    if settings.admin_key:
        digest = hash_key(settings.admin_key)
        if bootstrap is None:
            session.add(ApiKey(id=BOOTSTRAP_ID, name="admin", scopes=["admin"], key_hash=digest, bootstrap=True))
        elif bootstrap.key_hash != digest or bootstrap.revoked_at is not None:
            # The operator rotated MODELSERVE_ADMIN_KEY: the environment is the source of truth.
            bootstrap.key_hash, bootstrap.revoked_at = digest, None
            session.add(bootstrap)
        session.commit()
        return None
    if bootstrap is not None and bootstrap.revoked_at is None:
        return None
    key, _ = generate_key()
    if bootstrap is None:
        session.add(ApiKey(id=BOOTSTRAP_ID, name="admin", scopes=["admin"], key_hash=hash_key(key), bootstrap=True))
    else:
        bootstrap.key_hash, bootstrap.revoked_at = hash_key(key), None
        session.add(bootstrap)
    session.commit()
    return key


def verify_key(session: Session, key: str) -> Principal:
    row = session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("Unknown or revoked API key")
    return Principal(key_id=row.id, name=row.name, scopes=row.scopes, services=row.services)


class VerifyRequest(BaseModel):
    key: str


internal_router = APIRouter(prefix="/internal", include_in_schema=False)
router = APIRouter(prefix="/api/v1/keys", tags=["keys"])


@internal_router.post("/keys/verify", response_model=Principal)
def verify(body: VerifyRequest, session: SessionDep) -> Principal:
    return verify_key(session, body.key)


@router.post("", status_code=201, response_model=ApiKeyCreated, summary="Create an API key")
def create_key(body: ApiKeyCreate, session: SessionDep, response: Response) -> ApiKeyCreated:
    key, key_id = generate_key()
    row = ApiKey(
        id=key_id, name=body.name, scopes=sorted(set(body.scopes)), services=body.services, key_hash=hash_key(key)
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    response.headers["Location"] = f"/api/v1/keys/{key_id}"
    log.info("api key created", extra={"key_id": key_id, "scopes": row.scopes})
    return ApiKeyCreated(**ApiKeyPublic.model_validate(row, from_attributes=True).model_dump(), key=key)


@router.get("", response_model=Page[ApiKeyPublic], summary="List API keys (never their secrets)")
def list_keys(
    session: SessionDep, include_revoked: bool = False, limit: Limit = 50, offset: Offset = 0
) -> Page[ApiKeyPublic]:
    query = select(ApiKey)
    if not include_revoked:
        query = query.where(col(ApiKey.revoked_at).is_(None))
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(query.order_by(col(ApiKey.created_at), col(ApiKey.id)).offset(offset).limit(limit)).all()
    items = [ApiKeyPublic.model_validate(row, from_attributes=True) for row in rows]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get("/{key_id}", response_model=ApiKeyPublic, summary="Show one API key")
def get_key(key_id: str, session: SessionDep) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key '{key_id}' does not exist")
    return row


def _other_active_admins(session: Session, key_id: str) -> int:
    active = session.exec(select(ApiKey).where(col(ApiKey.revoked_at).is_(None), ApiKey.id != key_id)).all()
    return sum(1 for row in active if "admin" in row.scopes)


@router.delete(
    "/{key_id}",
    status_code=204,
    summary="Revoke an API key",
    responses={409: {"description": "The last active admin key cannot be revoked"}},
)
async def revoke_key(key_id: str, session: SessionDep, request: Request) -> Response:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        raise NotFound(f"API key '{key_id}' does not exist or is already revoked")
    if "admin" in row.scopes and _other_active_admins(session, key_id) == 0:
        # Nobody could manage keys any more (until an operator restarts with a new MODELSERVE_ADMIN_KEY).
        raise Conflict(f"API key '{key_id}' is the last active admin key; create another admin key first")
    row.revoked_at = utcnow()
    session.add(row)
    session.commit()
    # Gateways cache verified keys for a few seconds; tell them now.
    await publish_event(request.app, "key", key_id)
    log.info("api key revoked", extra={"key_id": key_id})
    return Response(status_code=204)
