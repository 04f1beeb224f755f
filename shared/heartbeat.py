"""Heartbeats of the processes that serve no HTTP (workers, scheduler), in ONE Redis hash.

`HEARTBEATS` maps `<role>:<ident>` to the epoch second its beat runs out; a process refreshes its field every few
seconds and removes it when it stops. Readiness probes and healthchecks read the hash with one HGETALL
(`live_roles`, `is_alive`): never a key scan, whose cost grows with the whole keyspace.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis

log = logging.getLogger(__name__)
HEARTBEATS = "modelserve:heartbeats"
"""HASH `<role>:<ident>` -> epoch seconds (float) at which that process's beat runs out."""
INTERVAL_SECONDS = 5
TTL_SECONDS = 15
_PRUNE_AFTER_SECONDS = 3600
"""A field past its expiry this long (a process killed without a word) is removed by the next beat."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def roles_alive(beats: Mapping[Any, Any], at: float | None = None) -> set[str]:
    """The roles with at least one beat not yet run out, from the hash's content."""
    at = time.time() if at is None else at
    alive = set()
    for field, until in beats.items():
        try:
            if float(_text(until)) > at:
                alive.add(_text(field).split(":", 1)[0])
        except ValueError:
            continue
    return alive


class Heartbeat:
    """Refreshes the field `<role>:<ident>` of `HEARTBEATS` every few seconds on a daemon thread."""

    def __init__(self, client: redis.Redis, role: str, ident: str | None = None) -> None:
        self.client = client
        self.role = role
        ident = ident or f"{socket.gethostname()}-{threading.get_native_id()}"
        self.field = f"{role}:{ident}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{role}", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.client.hdel(HEARTBEATS, self.field)

    def beat(self) -> bool:
        """One refresh; False when Redis cannot be reached (the next beat tries again)."""
        current = time.time()
        try:
            self.client.hset(HEARTBEATS, self.field, f"{current + TTL_SECONDS:.3f}")
            self._prune(current)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)
            return False
        return True

    def _prune(self, current: float) -> None:
        stale = [f for f, until in self.client.hgetall(HEARTBEATS).items() if _expired(until, current)]
        if stale:
            self.client.hdel(HEARTBEATS, *stale)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_SECONDS):
            self.beat()


def _expired(until: Any, current: float) -> bool:
    try:
        return float(_text(until)) + _PRUNE_AFTER_SECONDS < current
    except ValueError:
        return True


def is_alive(client: redis.Redis, role: str) -> bool:
    """Whether a process of `role` beat recently (sync: healthchecks)."""
    return role in roles_alive(client.hgetall(HEARTBEATS))


async def live_roles(client: Any) -> set[str]:
    """The roles with a live process (async: readiness probes). `client` is a `redis.asyncio.Redis`."""
    return roles_alive(await client.hgetall(HEARTBEATS))
