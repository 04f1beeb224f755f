"""Heartbeats in Redis for processes that serve no HTTP (workers, scheduler): readiness and healthchecks read them."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

import redis

from shared.redis import heartbeat_key

log = logging.getLogger(__name__)
INTERVAL_SECONDS = 5
TTL_SECONDS = 15


class Heartbeat:
    """Refreshes `modelserve:heartbeat:<role>:<ident>` every few seconds on a daemon thread."""

    def __init__(self, client: redis.Redis, role: str, ident: str | None = None) -> None:
        self.client = client
        self.key = heartbeat_key(role, ident or f"{socket.gethostname()}-{threading.get_native_id()}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{role}", daemon=True)

    def start(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(redis.RedisError):
            self.client.delete(self.key)

    def _beat(self) -> None:
        try:
            self.client.set(self.key, "1", ex=TTL_SECONDS)
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL_SECONDS):
            self._beat()


def is_alive(client: redis.Redis, role: str) -> bool:
    return any(True for _ in client.scan_iter(match=heartbeat_key(role, "*"), count=100))
