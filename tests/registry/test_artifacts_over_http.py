"""Replicas without a shared volume fetch model files from the registry: `/internal/artifacts/{sha256}`."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from registry.app import create_app
from shared.artifacts import HttpArtifactStore, LocalArtifactStore, artifact_store
from shared.errors import NotFound, ServiceUnavailable
from shared.settings import Settings
from tests.conftest import LiveServer


def test_a_replica_fetches_an_uploaded_model_once_and_checks_it(
    settings: Settings, tmp_path: Path, onnx_models: dict[str, Path]
) -> None:
    token = "internal-" + "x" * 32
    registry_settings = settings.model_copy(update={"internal_token": token})
    model = onnx_models["random_forest"]
    writer = LocalArtifactStore(registry_settings.artifacts_dir).writer(2**30)
    writer.write(model.read_bytes())
    staged = writer.finish()
    LocalArtifactStore(registry_settings.artifacts_dir).commit(staged)
    sha = staged.sha256
    with LiveServer(create_app(registry_settings)) as server:
        # Internal only: without the token the route is refused.
        assert httpx.get(f"{server.url}/internal/artifacts/{sha}").status_code == 401
        replica = Settings(
            data_dir=tmp_path / "replica", registry_url=server.url, internal_token=token, artifact_fetch="http"
        )
        store = artifact_store(replica)
        assert isinstance(store, HttpArtifactStore)
        path = store.local_path(sha)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha == hashlib.sha256(model.read_bytes()).hexdigest()
        assert path.is_relative_to(tmp_path / "replica")
    # Cached: served from the replica's own copy once the registry is gone.
    assert store.local_path(sha) == path
    with pytest.raises(ServiceUnavailable):
        store.local_path("0" * 64)  # not cached, registry unreachable: a clear error, not a hang
    with pytest.raises(NotFound):
        store.local_path("../../etc/passwd")


def test_wrong_bytes_are_refused(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.responses import Response

    app = FastAPI()
    claimed = "a" * 64

    @app.get("/internal/artifacts/{sha}")
    async def lying(sha: str) -> Response:
        await asyncio.sleep(0)
        return Response(b"not what was asked for")

    with LiveServer(app) as server:
        store = HttpArtifactStore(server.url, tmp_path / "cache", token=None)
        with pytest.raises(NotFound, match="other content"):
            store.local_path(claimed)
        assert not store.exists(claimed)
