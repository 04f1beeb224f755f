"""Runs the real `modelserve` console script (the one `pip install` put next to the interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import example_models, shared_platform  # noqa: F401 - fixtures
from tests.e2e.conftest import Platform

MODELSERVE = str(Path(sys.executable).with_name("modelserve"))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Cli:
    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        done = subprocess.run(
            [MODELSERVE, *args], capture_output=True, text=True, input=input, env={**self.env, **(env or {})},
            cwd=self.cwd, timeout=900,
        )  # fmt: skip
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, **kw: Any) -> Result:
        result = self(*args, **kw)
        assert result.code == 0, f"modelserve {' '.join(args)} exited {result.code}:\n{result.stdout}\n{result.stderr}"
        return result


@pytest.fixture
def cli(shared_platform: Platform, tmp_path: Path) -> Cli:  # noqa: F811
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
    env = {**clean, "XDG_CONFIG_HOME": str(tmp_path / "config"), "MODELSERVE_URL": shared_platform.url,
           "MODELSERVE_API_KEY": shared_platform.admin_key, "COLUMNS": "200", "NO_COLOR": "1"}  # fmt: skip
    return Cli(env, tmp_path)
