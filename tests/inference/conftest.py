"""Model files for the runtime tests, generated once per session (sklearn2pmml needs a JVM: ~2 s in all)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.runtimes import Runtime, load_runtime
from shared.settings import Settings
from tests.fixtures import models


@pytest.fixture(scope="session")
def runtime_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for loading runtimes (no Redis or database needed)."""
    return Settings(environment="test", data_dir=tmp_path_factory.mktemp("data"), log_json=False)


@pytest.fixture(scope="session")
def pmml_runtimes(pmml_models: dict[str, Path], runtime_settings: Settings) -> dict[tuple[str, str], Runtime]:
    """Loaded PMML runtimes by (fixture name, engine) for both engines, where the engine loads the model."""
    loaded: dict[tuple[str, str], Runtime] = {}
    for name, path in pmml_models.items():
        for engine in ("jpmml", "pypmml"):
            if engine == "jpmml" and name in models.JPMML_REFUSES:
                continue
            loaded[(name, engine)] = load_runtime(path, runtime_settings, engine=engine)
    return loaded
