"""An inference process's own memory bound: allocations past it fail the call, and a watchdog restarts it.

`RLIMIT_DATA` bounds the process's private writable memory (heap, anonymous mappings, onnxruntime's arena):
a graph asking for more gets an allocation error, answered as that call's failure, and the replica goes on
serving. Memory that escapes it (shared mappings) is caught by a watchdog reading the resident size: past
the limit the process exits, and its supervisor restarts it. Either way the replica pays, never the host.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_OUT_OF_MEMORY = 75
"""Exit code of a process the watchdog stopped (EX_TEMPFAIL: its supervisor restarts it)."""


def limit_data_segment(max_bytes: int) -> None:
    """Lower the process's `RLIMIT_DATA` to `max_bytes` (never raising a stricter limit already set)."""
    if max_bytes <= 0:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard if hard != resource.RLIM_INFINITY else limit))


def resident_bytes() -> int:
    """The process's resident set size, from /proc (no dependency, cheap enough to read every second)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryWatchdog:
    """A daemon thread that calls `on_exceeded` (by default: exit the process) once the resident size
    passes `max_bytes`."""

    def __init__(self, max_bytes: int, interval: float, on_exceeded: Callable[[int], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self.interval = interval
        self._on_exceeded = on_exceeded or _exit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="memory-watchdog", daemon=True)

    def start(self) -> MemoryWatchdog:
        if self.max_bytes > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            used = resident_bytes()
            if used > self.max_bytes:
                self._on_exceeded(used)
                return


def _exit(used: int) -> None:
    log.critical("resident memory %d bytes is past the limit (replica_max_memory_bytes): restarting", used)
    os._exit(EXIT_OUT_OF_MEMORY)  # no cleanup: memory is what is short, the supervisor starts a fresh one
