"""API keys: their format, hashing, scopes, and the principal a verified key stands for."""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

from pydantic import BaseModel

Scope = Literal["admin", "predict"]
SCOPES: tuple[Scope, ...] = ("admin", "predict")

KEY_PREFIX = "msk_"
PRINCIPAL_HEADER = "X-Modelserve-Principal"
"""Set by the gateway on internal calls: the verified caller, as JSON."""
INTERNAL_TOKEN_HEADER = "X-Modelserve-Internal"
"""Shared secret internal processes present to each other."""


def generate_key() -> tuple[str, str]:
    """A new key and its public id: `msk_<id>_<secret>` (the id is safe to show and log)."""
    key_id = secrets.token_hex(6)
    return f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}", key_id


def hash_key(key: str) -> str:
    # Keys are 256-bit random strings, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Principal(BaseModel):
    """Who is calling: a key's id, name, scopes and (optionally) the services it is limited to."""

    key_id: str
    name: str
    scopes: list[Scope]
    services: list[str] | None = None

    def allows(self, scope: Scope, service: str | None = None) -> bool:
        if "admin" in self.scopes:
            return True
        if scope not in self.scopes:
            return False
        return service is None or self.services is None or service in self.services
