"""`Idempotency-Key` on uploads: a retried upload answers what the first one made instead of storing a copy.

The key is stored in the same transaction as the object it created (`upload_keys`: scope, key, a fingerprint
of the request, a reference to the object). A retry with the same key and the same request finds the reference
and answers the object as it is; the same key with another request is refused (422); a key whose object was
deleted since is forgotten and the upload goes ahead as new.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime

import orjson
from sqlalchemy import Column, DateTime
from sqlmodel import Field, Session, SQLModel, delete

from registry.tables import utcnow
from shared.errors import ValidationFailed, field_error

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


def forget(session: Session, scope: str, key: str) -> None:
    """Drop a key whose object is gone (then the upload is made again, as new)."""
    session.execute(delete(UploadKey).where(UploadKey.scope == scope, UploadKey.key == key))  # type: ignore[arg-type]
    session.commit()
