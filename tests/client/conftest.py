"""A `modelserve up` shared by a module's tests, and the example models trained once per session."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Platform, start_platform

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
IRIS_CSV = EXAMPLES / "iris.csv"


@pytest.fixture(scope="session")
def example_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`examples/train.py`'s ONNX files and iris.joblib, in a temporary directory."""
    out = tmp_path_factory.mktemp("models")
    subprocess.run(
        [sys.executable, str(EXAMPLES / "train.py"), "--no-pmml", "--out", str(out)], check=True, timeout=300
    )
    return out


@pytest.fixture(scope="module")
def shared_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    base = tmp_path_factory.mktemp("platform")
    running = start_platform(base / "data", base / "up.log")
    yield running
    if running.process.poll() is None:
        running.stop()
