"""Console sign-in: an opaque session id in an HttpOnly, SameSite=Strict cookie; the key stays in Redis.

The browser never holds the API key after sign-in, only a random id; Redis maps its hash to the key and the
session's CSRF token, so every gateway worker sees the same sessions and signing out ends it everywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request, Response
from redis import asyncio as aioredis

from shared.redis import async_redis
from shared.settings import Settings

COOKIE = "modelserve_console"
PRE_COOKIE = "modelserve_console_pre"
"""A sign-in form's own CSRF token (double submit) before any session exists."""
_PREFIX = "modelserve:console:session:"


@dataclass(frozen=True)
class ConsoleSession:
    key: str
    csrf: str
    admin: bool
    key_hint: str
    """The key's prefix, shown as who is signed in (never the secret)."""


class Sessions:
    """Sessions in Redis with a sliding expiry; the Redis client is made on first use (inside the event loop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._redis: aioredis.Redis | None = None

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = async_redis(self.settings)
        return self._redis

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    @staticmethod
    def _name(session_id: str) -> str:
        return _PREFIX + hashlib.sha256(session_id.encode()).hexdigest()

    async def create(self, key: str, admin: bool) -> tuple[str, ConsoleSession]:
        session_id = secrets.token_urlsafe(32)
        session = ConsoleSession(key=key, csrf=secrets.token_urlsafe(32), admin=admin, key_hint=key[:12] + "…")
        value = orjson.dumps(session.__dict__)
        await self.redis.set(self._name(session_id), value, ex=self.settings.console_session_seconds)
        return session_id, session

    async def get(self, session_id: str | None) -> ConsoleSession | None:
        if not session_id or len(session_id) > 100:
            return None
        name = self._name(session_id)
        raw = await self.redis.getex(name, ex=self.settings.console_session_seconds)
        if raw is None:
            return None
        data: dict[str, Any] = orjson.loads(raw)
        return ConsoleSession(**data)

    async def delete(self, session_id: str | None) -> None:
        if session_id:
            await self.redis.delete(self._name(session_id))


def set_cookie(response: Response, name: str, value: str, settings: Settings, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=settings.console_cookie_secure,
        path="/",
    )


def same_token(expected: str | None, given: Any) -> bool:
    return bool(expected) and isinstance(given, str) and hmac.compare_digest(expected or "", given)


def sessions_of(request: Request) -> Sessions:
    return request.app.state.console_sessions  # type: ignore[no-any-return]
