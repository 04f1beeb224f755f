"""The `modelserve` console script still runs the platform: `modelserve up` (what `make up` calls) and the
one-process commands are mounted from `modelserve.server` next to the client commands."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.cli.conftest import MODELSERVE
from tests.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SERVER_COMMANDS = ("up", "gateway", "registry", "inference", "worker", "scheduler", "migrate", "healthcheck")


def test_every_server_command_is_there() -> None:
    listed = subprocess.run(
        [MODELSERVE, "--help"], capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"}
    )
    assert listed.returncode == 0
    for command in (*SERVER_COMMANDS, "login", "models", "deploy", "services", "predict", "datasets", "jobs", "keys"):
        assert f" {command} " in listed.stdout, command


def test_modelserve_up_from_the_console_script(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [MODELSERVE, "up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean, "MODELSERVE_LOG_JSON": "true"},
        )
    try:
        deadline = time.monotonic() + 180
        while "modelserve is ready" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
