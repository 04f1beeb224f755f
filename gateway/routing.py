"""The gateway's routing table: service -> ready replica URLs and pinned version, kept in memory.

Refreshed from the registry when a `service` event arrives over Redis pub/sub (and every few seconds as
a safety net); the predict path never touches the database or the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

from gateway.upstream import Upstreams
from shared.tasks import stop_task

log = logging.getLogger(__name__)
FALLBACK_REFRESH_SECONDS = 5.0
MISS_REFRESH_SECONDS = 0.25
"""A predict for a name the table lacks asks the registry at most this often (names come from URLs)."""


@dataclass
class Route:
    name: str
    status: str
    paused: bool
    model: str
    version: int | None
    replicas: list[str]
    signature: dict[str, Any] | None
    _turn: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def ordered(self) -> list[str]:
        """Replicas starting at the next in round-robin order (the rest are the retry candidates)."""
        if not self.replicas:
            return []
        start = next(self._turn) % len(self.replicas)
        return self.replicas[start:] + self.replicas[:start]


class RoutingTable:
    def __init__(self, upstreams: Upstreams, registry_url: str) -> None:
        self.upstreams = upstreams
        self.registry_url = registry_url
        self.routes: dict[str, Route] = {}
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = -1.0
        self.loaded = False

    def get(self, name: str) -> Route | None:
        return self.routes.get(name)

    async def refresh(self) -> None:
        data = await self.upstreams.call_json("GET", f"{self.registry_url}/internal/routes", timeout=5)
        fresh: dict[str, Route] = {}
        for name, info in data.get("services", {}).items():
            old = self.routes.get(name)
            route = Route(
                name=name,
                status=info["status"],
                paused=info["paused"],
                model=info["model"],
                version=info["version"],
                replicas=list(info["replicas"]),
                signature=info.get("signature"),
            )
            if old is not None:
                route._turn = old._turn  # keep the rotation going across refreshes
            fresh[name] = route
        self.routes = fresh
        self.loaded = True

    async def refresh_on_miss(self) -> None:
        """A refresh for a route that was missing or had no replica: one call shared by every caller waiting,
        none when the table was refreshed a moment ago; a failure leaves the table as it was."""
        loop = asyncio.get_running_loop()
        if self._refreshing is None:
            if loop.time() - self._refreshed_at < MISS_REFRESH_SECONDS:
                return
            self._refreshing = asyncio.ensure_future(self._refresh_once())
        with contextlib.suppress(Exception):
            await asyncio.shield(self._refreshing)

    async def _refresh_once(self) -> None:
        try:
            await self.refresh()
        finally:
            self._refreshed_at = asyncio.get_running_loop().time()
            self._refreshing = None

    def invalidate(self) -> None:
        self._dirty.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await stop_task(self._task)

    async def _run(self) -> None:
        # Client libraries can turn a cancel that lands mid-call into their own error: the flag ends the loop anyway.
        while not self._stopping.is_set():
            try:
                await self.refresh()
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning("routing table refresh failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), FALLBACK_REFRESH_SECONDS)
            self._dirty.clear()
