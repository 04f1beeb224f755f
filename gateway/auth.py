"""API-key authentication at the edge: which scope a path needs, and a short-lived cache of verified keys."""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.auth import Principal, bearer_token, hash_key
from shared.auth import Scope as KeyScope
from shared.errors import Forbidden, ModelServeError, Unauthorized, problem_response


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    methods: frozenset[str] | None
    scope: KeyScope | None
    """None: open to anyone."""


def _rule(pattern: str, scope: KeyScope | None, methods: str | None = None) -> Rule:
    return Rule(re.compile(pattern), frozenset(methods.split()) if methods else None, scope)


# First match wins. `service` groups name the service a predict key may be limited to.
RULES: tuple[Rule, ...] = (
    _rule(r"^/api/v1/services/(?P<service>[^/]+)/(predict|jobs)$", "predict"),
    _rule(r"^/api/v1/services/(?P<service>[^/]+)$", "predict", "GET"),
    _rule(r"^/api/v1/jobs/[^/]+$", "predict", "GET DELETE"),
    _rule(r"^/v2(/health/(live|ready))?/?$", None),
    _rule(r"^/v2/(models/stats|repository/index)$", "predict"),  # answers only the services the key may use
    _rule(r"^/v2/models/(?P<service>[^/]+)(/versions/[^/]+)?(/ready|/infer|/config|/stats)?$", "predict"),
    # The seed's console API (gateway/daas.py) needs the scope of the /api/v1 call it makes; service-info reads
    # one service (its name is in the body: the /api/v1 call checks a service-limited key).
    _rule(r"^/daas/service-info$", "predict"),
    _rule(r"^/daas/", "admin"),
    _rule(r"^/(api|v2)/", "admin"),
)


def required_scope(method: str, path: str) -> tuple[KeyScope | None, str | None, bool]:
    """(scope, service, protected) for a request; unprotected paths need no key."""
    for rule in RULES:
        match = rule.pattern.match(path)
        if match and (rule.methods is None or method in rule.methods):
            return rule.scope, match.groupdict().get("service"), rule.scope is not None
    return None, None, False


class KeyCache:
    """Verified keys by hash for `ttl` seconds; revocations clear it at once through registry events.

    `clear()` starts a new generation: a verification that was in flight when it ran answers its own callers
    but is not cached, and later callers verify afresh (else a key revoked meanwhile would stay cached).
    """

    def __init__(self, verify: Callable[[str], Awaitable[Principal]], ttl: float = 30.0, size: int = 10_000) -> None:
        self._verify = verify
        self._ttl = ttl
        self._size = size
        self._entries: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[Principal]] = {}
        self._generation = 0

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._inflight.clear()

    async def principal(self, key: str) -> Principal:
        digest = hash_key(key)
        hit = self._entries.get(digest)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            self._entries.move_to_end(digest)
            return hit[1]
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        generation = self._generation
        try:
            principal = await self._verify(key)
            if generation == self._generation:
                self._entries[digest] = (now + self._ttl, principal)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
            future.set_result(principal)
            return principal
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: nobody else may be waiting
            raise
        finally:
            if self._inflight.get(digest) is future:
                del self._inflight[digest]


class AuthMiddleware:
    """Everything under /api/ (and V2 inference) needs a key: 401 without a valid one, 403 without the scope."""

    def __init__(self, app: ASGIApp, keys: Callable[[], KeyCache]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed, service, protected = required_scope(scope["method"], scope["path"])
        if protected:
            try:
                scope.setdefault("state", {})["principal"] = await self._authorise(scope, needed, service)
            except ModelServeError as err:
                await problem_response(err, scope["path"])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _authorise(self, scope: Scope, needed: KeyScope | None, service: str | None) -> Principal:
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        return await authorise(self.keys(), header, needed, service)


async def authorise(
    keys: KeyCache, authorization: str | None, needed: KeyScope | None, service: str | None
) -> Principal:
    """The principal of an `Authorization` header that has `needed` (for `service`); 401/403 otherwise."""
    key = bearer_token(authorization)
    if key is None:
        raise Unauthorized("An API key is required: send 'Authorization: Bearer <key>'")
    principal = await keys.principal(key)
    if needed is not None and not principal.allows(needed, service):
        what = f"the '{needed}' scope" + (f" for service '{service}'" if service and needed != "admin" else "")
        raise Forbidden(f"This key lacks {what}")
    return principal
