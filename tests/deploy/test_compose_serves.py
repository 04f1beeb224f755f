"""compose.yaml serves predictions: its services started the way the file starts them, one "container" each.

No container engine here, so each app service of compose.yaml runs as its own process with the file's own
command and environment, on its own loopback address (127.0.0.N stands for the container's IP; the file's
service names resolve to those addresses, `0.0.0.0` binds the container's own address), against the machine's
real Redis and PostgreSQL in place of the `redis`/`postgres` containers. A model service deployed through the
gateway must answer: its replicas run inside the registry's "container" and must be announced at an address the
gateway's container reaches (not 127.0.0.1).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ADMIN_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
ORDER = ["registry", "inference", "worker", "scheduler", "gateway"]
_VAR = re.compile(r"\$\{([A-Z_]+)(?::[-?]([^}]*))?\}")


def _interpolate(value: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m[1], m[2] if m[2] is not None else ""), value)


class ComposeProcesses:
    def __init__(self, workdir: Path, redis_url: str, postgres_url: str) -> None:
        compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
        self.services: dict[str, Any] = compose["services"]
        names = [*ORDER, "migrate"]
        self.hosts = {name: f"127.0.0.{40 + i}" for i, name in enumerate(names)}
        self.workdir = workdir
        self.data = workdir / "data"  # the `modelserve-data` volume, mounted at /data
        self.secrets = {"MODELSERVE_ADMIN_KEY": ADMIN_KEY, "MODELSERVE_INTERNAL_TOKEN": "t" * 40}
        self.redis_url, self.postgres_url = redis_url, postgres_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _env(self, name: str) -> dict[str, str]:
        raw = {k: _interpolate(str(v), self.secrets) for k, v in self.services[name]["environment"].items()}
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
        for key, value in raw.items():
            if key == "MODELSERVE_DATABASE_URL":
                value = self.postgres_url  # the `postgres` container
            elif key == "MODELSERVE_REDIS_URL":
                value = self.redis_url  # the `redis` container
            elif key == "MODELSERVE_DATA_DIR":
                value = str(self.data) if value == "/data" else value
            else:
                value = self._resolve(value, name)
            env[key] = value
        return env

    def _resolve(self, value: str, own: str) -> str:
        """Service names -> their addresses; 0.0.0.0 (all interfaces) -> this container's own address."""
        if value == "0.0.0.0":
            return self.hosts[own]
        if value in self.hosts:  # a bare host name (e.g. MODELSERVE_REPLICA_ADVERTISE_HOST)
            return self.hosts[value]
        for service, host in self.hosts.items():  # inside URLs
            value = re.sub(rf"(?<=//){service}(?=[:/]|$)", host, value)
        return value

    def _argv(self, name: str) -> list[str]:
        command = [self.hosts[name] if part == "0.0.0.0" else str(part) for part in self.services[name]["command"]]
        return [sys.executable, "-m", "modelserve.server", *command]  # the image's ENTRYPOINT is `modelserve`

    def start(self) -> ComposeProcesses:
        self.data.mkdir(parents=True)
        migrate = subprocess.run(
            self._argv("migrate"), env=self._env("migrate"), capture_output=True, text=True, timeout=180
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        for name in ORDER:
            log = (self.workdir / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(
                self._argv(name), env=self._env(name), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        return self

    @property
    def gateway(self) -> str:
        port = next(p for p in self.services["gateway"]["ports"]).split(":")[-1]
        return f"http://{self.hosts['gateway']}:{port}"

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.workdir.glob("*.log")))


@pytest.fixture
def compose(tmp_path: Path, redis_url: str, postgres_url: str) -> Iterator[ComposeProcesses]:
    processes = ComposeProcesses(tmp_path, redis_url, postgres_url).start()
    yield processes
    processes.stop()


def _wait(check: Any, what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_compose_services_serve_a_prediction_through_the_gateway(
    compose: ComposeProcesses, onnx_models: dict[str, Path]
) -> None:
    client = httpx.Client(base_url=compose.gateway, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    try:
        _wait(lambda: client.get("/health/ready").status_code == 200, "gateway ready")
        model = onnx_models["random_forest"]
        uploaded = client.post(
            "/api/v1/models", data={"name": "iris"}, files={"file": (model.name, model.read_bytes())}
        )
        assert uploaded.status_code == 201, uploaded.text
        created = client.post("/api/v1/services", json={"name": "iris", "model": "iris", "replicas": 1})
        assert created.status_code == 201, created.text
        body = _wait(
            lambda: (b := client.get("/api/v1/services/iris").json()).get("status") == "running" and b,
            "service running",
        )
        # Announced at the registry container's address, which the gateway's container can reach.
        assert body["replica_list"][0]["url"].startswith(f"http://{compose.hosts['registry']}:")
        answer = client.post("/api/v1/services/iris/predict", json={"inputs": {"X": [5.1, 3.5, 1.4, 0.2]}})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] == 0
        v2 = client.post(
            "/v2/models/iris/infer",
            json={"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]},
        )
        assert v2.status_code == 200, v2.text
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{compose.logs()}") from exc
    finally:
        client.close()
