"""The data directory of `modelserve up`: owned by one running instance, readable by its user only.

A second `up` on the same directory would start a second Redis on the same append-only files and a second
registry on the same SQLite file, then delete the first instance's metrics on exit. `DataDirLock` takes an
exclusive `flock` on `<data_dir>/modelserve.lock` for the life of the process (the kernel drops it when the
process dies, however it dies) and writes the running instance's URL and pid into it, so a second `up`
refuses at once and names the instance that holds the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from pathlib import Path
from typing import Any

DIR_MODE = 0o700
SECRET_MODE = 0o600
LOCK_FILE = "modelserve.lock"
SECRETS_DIR = "secrets"


class DataDirInUse(RuntimeError):
    """Another running instance holds the data directory."""

    def __init__(self, data_dir: Path, holder: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.holder = holder
        url = holder.get("url") or "an unknown URL"
        pid = holder.get("pid") or "unknown"
        super().__init__(
            f"the data directory {data_dir} is in use by the modelserve instance at {url} (pid {pid}); "
            "stop it first, or give this one another --data-dir"
        )


def secure_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def write_secret(path: Path, value: str) -> None:
    """Write a secret file readable by its owner only (never, even briefly, wider)."""
    secure_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_MODE)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), SECRET_MODE)
        fh.write(value)


def read_or_create_secret(path: Path, nbytes: int = 32) -> str:
    """The secret stored at `path`, generated (URL-safe random) the first time."""
    with contextlib.suppress(FileNotFoundError):
        value = path.read_text().strip()
        if value:
            os.chmod(path, SECRET_MODE)
            return value
    value = secrets.token_urlsafe(nbytes)
    write_secret(path, value)
    return value


class DataDirLock:
    """An exclusive lock on a data directory, held until `release()` or the process's end."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        """Take the lock or raise `DataDirInUse` naming the holder; touches nothing else in the directory."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, SECRET_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirInUse(self.data_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.describe(pid=os.getpid())
        return self

    def describe(self, **holder: Any) -> None:
        """Record who holds the lock (the pid, then the URL once known) for a second instance to report."""
        if self._fd is None:
            return
        current = _read_holder(self._fd)
        current.update(holder)
        data = json.dumps(current).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
