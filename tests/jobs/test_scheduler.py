"""The scheduler outlives a Redis restart: it keeps running (and its janitor with it) and carries on once back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from shared.heartbeat import is_alive
from shared.redis_server import find_redis_server
from tests.conftest import free_port


def _redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True, exist_ok=True)
    argv = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(data)]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=1)
    _until(lambda: _pings(client), "redis-server to start")
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _until(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def test_the_scheduler_keeps_running_through_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    server = _redis(port, tmp_path / "redis")
    url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "MODELSERVE_REDIS_URL": url, "MODELSERVE_DATA_DIR": str(tmp_path / "data"),
           "MODELSERVE_SCHEDULER_REDIS_BACKOFF_SECONDS": "1"}  # fmt: skip
    code = "from jobs.scheduler import run_scheduler; from shared.settings import Settings; run_scheduler(Settings())"
    log = (tmp_path / "scheduler.log").open("wb")
    scheduler = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        _until(lambda: is_alive(client, "scheduler"), "the scheduler's first heartbeat")
        server.kill()
        server.wait()
        time.sleep(4)  # several ticks without Redis
        assert scheduler.poll() is None, (tmp_path / "scheduler.log").read_text()[-3000:]
        server = _redis(port, tmp_path / "redis")  # an empty Redis comes back on the same address
        _until(lambda: is_alive(client, "scheduler"), "the scheduler's heartbeat after the restart")
        assert scheduler.poll() is None
        scheduler.send_signal(signal.SIGTERM)
        assert scheduler.wait(30) == 0
    finally:
        if scheduler.poll() is None:
            scheduler.kill()
        server.kill()
        server.wait()
        log.close()
