"""`Idempotency-Key` on uploads: a retried upload answers what the first one made instead of storing a copy.

The key is stored in the same transaction as the object it created (`upload_keys`: scope, key, a fingerprint
of the request, a reference to the object). A retry with the same key and the same request finds the reference
and answers the object as it is; the same key with another request is refused (422); a key whose object was
deleted since is forgotten and the upload goes ahead as new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime

import orjson
from sqlalchemy import Column, DateTime
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, delete

from registry.catalog import ModelCatalog
from registry.schemas import ModelVersionPublic
from registry.tables import utcnow
from shared.artifacts import ArtifactStore
from shared.errors import Conflict, NotFound, ValidationFailed, field_error

HEADER = "Idempotency-Key"
DATASETS, MODELS = "datasets", "models"
"""The scopes: a key is unique per scope."""


class UploadKey(SQLModel, table=True):
    """The object an upload with this key made."""

    __tablename__ = "upload_keys"

    scope: str = Field(primary_key=True, max_length=32)
    """What was uploaded: `datasets` or `models`."""
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)
    """sha256 of the request (file content and form fields): the same key must come with the same request."""
    ref: str = Field(max_length=300)
    """The object made: a dataset name, or `<model>/<version>`."""
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class KeyReused(ValidationFailed):
    title, slug = "Idempotency key reused", "idempotency-key-reused"


def read_key(headers: Mapping[str, str], max_length: int) -> str | None:
    """The request's `Idempotency-Key` (None without one); 422 when it is empty, too long or not printable."""
    raw = headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > max_length or not (key.isascii() and key.isprintable()):
        reason = f"1 to {max_length} printable ASCII characters"
        raise ValidationFailed(
            f"Invalid {HEADER} header", errors=[field_error(f"header.{HEADER}", reason, received=raw[:100])]
        )
    return key


def fingerprint(content_sha256: str, fields: Mapping[str, str | None]) -> str:
    """One hash of what makes two uploads the same: the file's content and the form fields that matter."""
    body = orjson.dumps([content_sha256, dict(fields)], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def find(session: Session, scope: str, key: str, print_: str) -> str | None:
    """The reference stored under the key (None when unused); 422 when it was used with another request."""
    row = session.get(UploadKey, (scope, key))
    if row is None:
        return None
    if row.fingerprint != print_:
        raise KeyReused(
            f"The {HEADER} {key!r} was already used for a different upload",
            errors=[field_error(f"header.{HEADER}", "already used with another file or other fields")],
        )
    return row.ref


def remember(session: Session, scope: str, key: str, print_: str, ref: str) -> None:
    """Add the key to the session: the caller commits it together with the object it made."""
    session.add(UploadKey(scope=scope, key=key, fingerprint=print_, ref=ref))


# --- model uploads: the key is reserved while the upload is inspected -------------------------------------

_PENDING = ""
"""`ref` of a key whose upload is still being inspected."""


def begin_model_upload(
    engine: Engine, store: ArtifactStore, key: str, print_: str, stale_after_seconds: float
) -> ModelVersionPublic | None:
    """Reserve the key for this upload (None: go ahead), or answer the version an earlier upload with it made.

    A model name takes any number of versions, so two uploads with one key would both be stored: the key is
    reserved before the inspection, and a retry arriving meanwhile is answered 409 with `Retry-After`. A
    reservation older than `stale_after_seconds` (its registry died) is taken over.
    """
    with Session(engine) as session:
        for _ in range(3):
            row = session.get(UploadKey, (MODELS, key))
            if row is None:
                session.add(UploadKey(scope=MODELS, key=key, fingerprint=print_, ref=_PENDING))
                try:
                    session.commit()
                    return None
                except IntegrityError:  # reserved by a concurrent retry a moment ago
                    session.rollback()
                    continue
            if row.fingerprint != print_:
                find(session, MODELS, key, print_)  # raises KeyReused
            if row.ref:
                model_name, _, version = row.ref.rpartition("/")
                catalog = ModelCatalog(session, store)
                try:
                    model, version_row = catalog.resolve(model_name, version)
                except NotFound:  # deleted since: upload it again, as new
                    session.delete(row)
                    session.commit()
                    continue
                return catalog.version_public(model, version_row)
            created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            if (utcnow() - created).total_seconds() > stale_after_seconds:
                row.created_at = utcnow()
                session.add(row)
                session.commit()
                return None
            raise Conflict(
                f"An upload with this {HEADER} is still being inspected; retry shortly",
                headers={"Retry-After": "5"},
                errors=[field_error(f"header.{HEADER}", "an upload with this key is in progress")],
            )
    raise Conflict(f"Could not reserve the {HEADER}; try again", headers={"Retry-After": "1"})


def finish_model_upload(engine: Engine, key: str, model: str, version: int) -> None:
    """The upload stored `model` version `version`: a retry with the key answers it from now on."""
    with Session(engine) as session:
        row = session.get(UploadKey, (MODELS, key))
        if row is not None:
            row.ref = f"{model}/{version}"
            session.add(row)
            session.commit()


def abandon_model_upload(engine: Engine, key: str | None) -> None:
    """The upload failed: free the key so a retry is tried again."""
    if key is None:
        return
    with Session(engine) as session:
        row = session.get(UploadKey, (MODELS, key))
        if row is not None and not row.ref:
            session.delete(row)
            session.commit()


def forget(session: Session, scope: str, key: str) -> None:
    """Drop a key whose object is gone (then the upload is made again, as new)."""
    session.execute(delete(UploadKey).where(UploadKey.scope == scope, UploadKey.key == key))  # type: ignore[arg-type]
    session.commit()
