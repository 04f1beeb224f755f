"""prometheus_client's multiprocess values with the process id read once, not on every sample.

In multiprocess mode (`modelserve up`) each `inc`/`set`/`observe` asks `os.getpid()` whether the process forked.
glibc no longer caches the pid, so that is a system call per sample, and the gateway takes several samples per
request: py-spy put a fifth of the gateway's CPU under load in that check. Here the pid is kept in a variable
that `os.register_at_fork` refreshes in a forked child, which is exactly when the check must see a change.
"""

from __future__ import annotations

import os

_pid = os.getpid()
_installed = False


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


def process_identifier() -> int:
    """This process' id, refreshed after a fork."""
    return _pid


def install_multiprocess_values() -> None:
    """Make prometheus_client build multiprocess values with the cached pid (once, and only in that mode).

    It has to run before the process builds its first metric value: two value classes in one process would
    each map the same `<type>_<pid>.db` file with their own index of it.
    """
    global _installed
    if _installed or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import values

    if getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue(process_identifier=process_identifier)
    os.register_at_fork(after_in_child=_refresh_pid)
    _installed = True
