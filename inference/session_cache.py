"""A bounded LRU of loaded runtimes, keyed by artifact sha256 + engine, bounded by count and by bytes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from inference.runtimes.base import Runtime

logger = logging.getLogger("modelserve.inference.session_cache")

# Loading a PMML model in a JVM or building an onnxruntime session takes from milliseconds to a minute.
_LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# Module level on purpose: prometheus_client refuses a second registration of the same name.
MODEL_LOAD_SECONDS = Histogram(
    "modelserve_model_load_seconds",
    "Time to load a model version into the session cache (failed loads included).",
    buckets=_LOAD_BUCKETS,
)
CACHE_HITS = Counter("modelserve_session_cache_hits_total", "Session cache lookups that found the model loaded.")
CACHE_MISSES = Counter(
    "modelserve_session_cache_misses_total",
    "Session cache lookups that did not find the model loaded (they load it or wait for its load).",
)
CACHE_EVICTIONS = Counter(
    "modelserve_session_cache_evictions_total", "Models dropped from the session cache (LRU bounds or explicit)."
)
# inc/dec rather than set: several caches (tests, pool + pinned) then add up instead of overwriting each other;
# livesum adds up the live replicas in local multiprocess mode.
CACHE_MODELS = Gauge(
    "modelserve_session_cache_models", "Models loaded in the session cache.", multiprocess_mode="livesum"
)
CACHE_BYTES = Gauge(
    "modelserve_session_cache_bytes", "Artifact bytes loaded in the session cache.", multiprocess_mode="livesum"
)

Loader = Callable[[], tuple[Runtime, int]]
"""A blocking function that loads a runtime and says how many bytes it accounts for."""


@dataclass(slots=True)
class _Entry:
    runtime: Runtime
    size: int


class SessionCache:
    """A bounded LRU of loaded runtimes, safe to use from many coroutines of one event loop.

    `get` loads a missing key once however many coroutines ask for it at the same time (single
    flight), in a worker thread so the event loop keeps serving. After an insertion the least
    recently used entries are evicted, and their runtimes unloaded, until both `max_models` and
    `max_bytes` hold again; the entry just inserted is never evicted, so one model larger than
    `max_bytes` still loads (alone). A failed load is not cached: every waiter gets its exception
    and the next `get` tries again.

    An evicted runtime is unloaded at once: a request that obtained it just before may still be
    predicting with it, so size the bounds so that models in active use are not evicted.
    """

    def __init__(self, *, max_models: int, max_bytes: int) -> None:
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._loading: dict[str, asyncio.Future[Runtime]] = {}
        # Strong references to the load tasks: the event loop only keeps weak ones.
        self._tasks: set[asyncio.Task[None]] = set()
        self._total_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        """Loaded keys, least recently used first."""
        return list(self._entries)

    @property
    def total_bytes(self) -> int:
        """Bytes accounted for by the loaded runtimes."""
        return self._total_bytes

    async def get(self, key: str, load: Loader) -> Runtime:
        """The runtime cached under `key`, loading it with `load` (blocking, run in a thread) if needed."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            CACHE_HITS.inc()
            return entry.runtime
        CACHE_MISSES.inc()
        future = self._loading.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            # Nobody may have awaited the future when its load fails (all waiters cancelled): mark it seen.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._loading[key] = future
            # The load runs in its own task so that a cancelled caller does not cancel it for the others.
            task = asyncio.create_task(self._load(key, load, future), name=f"session-cache-load:{key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # shield: one caller giving up (client gone) must not cancel the shared future of the others.
        return await asyncio.shield(future)

    async def evict(self, key: str) -> bool:
        """Drop `key` and unload its runtime; False if it was not loaded. A load in flight is not affected."""
        entry = self._pop(key)
        if entry is None:
            return False
        await self._unload([entry.runtime])
        return True

    async def clear(self) -> None:
        """Drop and unload every loaded runtime (loads in flight still complete and are cached)."""
        evicted = [entry.runtime for entry in (self._pop(key) for key in list(self._entries)) if entry is not None]
        await self._unload(evicted)

    async def _load(self, key: str, load: Loader, future: asyncio.Future[Runtime]) -> None:
        start = time.perf_counter()
        try:
            runtime, size = await asyncio.to_thread(load)
        except asyncio.CancelledError:
            # Only when the event loop shuts down: the waiters are cancelled with it.
            self._loading.pop(key, None)
            future.cancel()
            raise
        except Exception as exc:
            self._loading.pop(key, None)
            MODEL_LOAD_SECONDS.observe(time.perf_counter() - start)
            future.set_exception(exc)
            return
        MODEL_LOAD_SECONDS.observe(time.perf_counter() - start)
        self._loading.pop(key, None)
        evicted = self._insert(key, runtime, max(0, int(size)))
        try:
            # Unload before answering: memory is back within bounds by the time anyone predicts.
            await self._unload(evicted)
        finally:
            future.set_result(runtime)

    def _insert(self, key: str, runtime: Runtime, size: int) -> list[Runtime]:
        """Cache `runtime` as most recently used; return the runtimes evicted to honour the bounds."""
        evicted: list[Runtime] = []
        # `key` is absent here: `get` only starts a load for a key that is neither loaded nor loading.
        self._entries[key] = _Entry(runtime, size)
        self._total_bytes += size
        CACHE_MODELS.inc()
        CACHE_BYTES.inc(size)
        # The new entry is the most recent one, so evicting from the front never reaches it while len > 1.
        while len(self._entries) > 1 and (len(self._entries) > self.max_models or self._total_bytes > self.max_bytes):
            oldest = next(iter(self._entries))
            entry = self._pop(oldest)
            if entry is not None:
                logger.info("evicting %s from the session cache (%d bytes)", oldest, entry.size)
                evicted.append(entry.runtime)
        return evicted

    def _pop(self, key: str) -> _Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._total_bytes -= entry.size
            CACHE_MODELS.dec()
            CACHE_BYTES.dec(entry.size)
            CACHE_EVICTIONS.inc()
        return entry

    async def _unload(self, runtimes: list[Runtime]) -> None:
        for runtime in runtimes:
            try:
                # unload may block (JVM, native session teardown): keep the event loop free.
                await asyncio.to_thread(runtime.unload)
            except Exception:
                # A runtime that fails to unload is gone from the cache anyway; the caller's request is fine.
                logger.exception("unloading an evicted runtime failed")
