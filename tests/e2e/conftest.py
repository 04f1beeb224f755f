"""End-to-end: start `modelserve up` as a real process tree and talk to it over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port

_KEY = re.compile(r"admin API key \(shown once, store it now\): (msk_\S+)")


@dataclass
class Platform:
    url: str
    process: subprocess.Popen[bytes]
    admin_key: str
    log: Path
    data_dir: Path

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_platform(data_dir: Path, log: Path, env: dict[str, str] | None = None) -> Platform:
    port = free_port()
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
    out = log.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "modelserve.server", "up", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**clean_env, "MODELSERVE_LOG_JSON": "true", **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"modelserve up exited early:\n{log.read_text()[-4000:]}")
        if "modelserve is ready" in log.read_text():
            break
        time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError(f"modelserve up not ready in time:\n{log.read_text()[-4000:]}")
    match = _KEY.search(log.read_text())
    return Platform(url, process, match.group(1) if match else "", log, data_dir)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    running = start_platform(tmp_path / "data", tmp_path / "up.log")
    yield running
    if running.process.poll() is None:
        running.stop()


@pytest.fixture
def admin(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=platform.url, headers={"Authorization": f"Bearer {platform.admin_key}"}, timeout=30
    ) as client:
        yield client
