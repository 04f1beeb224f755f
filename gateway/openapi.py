"""The gateway's OpenAPI document: its own routes plus the registry's public API, with bearer auth."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.auth import required_scope

log = logging.getLogger(__name__)
_TTL = 30.0


class OpenApiMerger:
    """Builds `/openapi.json` from the gateway's routes and the upstreams' public paths (cached briefly)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._cached: dict[str, Any] | None = None
        self._at = 0.0

    async def document(self, upstream_docs: list[dict[str, Any]]) -> dict[str, Any]:
        if self._cached is not None and time.monotonic() - self._at < _TTL:
            return self._cached
        doc = get_openapi(
            title="modelserve",
            version=self.app.version,
            description="Serve PMML and ONNX models as HTTP services. Send `Authorization: Bearer <API key>`.",
            routes=self.app.routes,
        )
        paths: dict[str, Any] = doc.setdefault("paths", {})
        schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
        for upstream in upstream_docs:
            for path, item in upstream.get("paths", {}).items():
                if path.startswith("/api/"):
                    paths.setdefault(path, {}).update(item)
            schemas.update(upstream.get("components", {}).get("schemas", {}))
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, item in paths.items():
            for method, operation in item.items():
                scope, _, protected = required_scope(method.upper(), path)
                if protected and isinstance(operation, dict):
                    operation["security"] = [{"bearer": []}]
                    operation.setdefault("description", "")
                    operation["description"] = (operation["description"] + f"\n\nNeeds scope `{scope}`.").strip()
        complete = len(upstream_docs) > 0
        if complete:
            self._cached, self._at = doc, time.monotonic()
        return doc
