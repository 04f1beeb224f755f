"""`GET /internal/artifacts/{sha256}`: model files for replicas that share no volume with the registry.

Internal only (the internal token middleware guards `/internal/*`; the gateway never forwards there).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

internal_router = APIRouter(prefix="/internal/artifacts", include_in_schema=False)


@internal_router.get("/{sha256}")
def download_artifact(sha256: str, request: Request) -> FileResponse:
    path = request.app.state.store.local_path(sha256)  # NotFound (404) for anything but a stored sha256
    return FileResponse(path, media_type="application/octet-stream", filename=sha256)
