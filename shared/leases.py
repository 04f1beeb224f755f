"""Leases in Redis: a key held by one owner for a while; only that owner may extend or release it.

Built on redis-py's `Lock`, whose release and extend are Lua scripts that compare the owner token first, so a
process whose lease ran out (and was taken by another) can never release or extend the new owner's lease. Every
lock and lease of the platform goes through `Lease`: the janitor's and the run recovery's sweep locks, and the
ownership of a running batch run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from types import TracebackType

import redis
from redis.exceptions import LockError, LockNotOwnedError

log = logging.getLogger(__name__)


class Lease:
    """`name` held for `seconds` by the owner `token` (random unless given)."""

    def __init__(self, client: redis.Redis, name: str, seconds: float, token: str | None = None) -> None:
        self.client, self.name, self.seconds = client, name, seconds
        self.token = token or uuid.uuid4().hex
        # Not thread-local: the keep-alive thread extends what the main thread acquired.
        self._lock = client.lock(name, timeout=seconds, blocking=False, thread_local=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """True when this owner now holds the lease; False when another owner holds it."""
        return bool(self._lock.acquire(blocking=False, token=self.token))

    def owned(self) -> bool:
        """Whether the lease is held by this owner right now."""
        held = self.client.get(self.name)
        return held is not None and (held.decode() if isinstance(held, bytes) else str(held)) == self.token

    def extend(self) -> bool:
        """Give the lease a full `seconds` again; False (nothing changed) when this owner no longer holds it."""
        self._lock.local.token = self.token.encode()
        try:
            self._lock.extend(self.seconds, replace_ttl=True)
        except LockError:  # LockNotOwnedError included: expired, or taken by another owner
            return False
        return True

    def release(self) -> bool:
        """Let the lease go; False (nothing changed) when this owner no longer holds it."""
        self.stop_keeping_alive()
        self._lock.local.token = self.token.encode()
        try:
            self._lock.release()
        except LockNotOwnedError:
            return False
        except LockError:
            return False
        return True

    def keep_alive(self, on_lost: threading.Event | None = None) -> Lease:
        """Extend the lease every third of its time on a daemon thread until released (or lost: sets `on_lost`)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._renew, args=(on_lost,), name=f"lease-{self.name}",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        return self

    def stop_keeping_alive(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _renew(self, on_lost: threading.Event | None) -> None:
        while not self._stop.wait(max(0.2, self.seconds / 3)):
            try:
                if not self.extend():
                    log.warning("lease %s was lost (expired or taken by another owner)", self.name)
                    if on_lost is not None:
                        on_lost.set()
                    return
            except redis.RedisError as exc:  # Redis away for a moment: try again next time
                log.warning("could not extend lease %s: %s", self.name, exc)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        with contextlib.suppress(redis.RedisError):
            self.release()
