"""Name and version (number, `latest` or alias) to a `VersionRef`, asked of the registry and cached."""

from __future__ import annotations

import time
from collections import OrderedDict

import httpx

from inference.predictor import VersionRef
from inference.runtimes.base import ModelDescription
from shared.auth import INTERNAL_TOKEN_HEADER
from shared.errors import ModelServeError, ServiceUnavailable
from shared.logging import REQUEST_ID_HEADER, request_id_var
from shared.settings import Settings

_MOVABLE_TTL = 2.0  # `latest` and aliases move; numbered versions never change


class VersionResolver:
    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None, size: int = 1024) -> None:
        headers = {INTERNAL_TOKEN_HEADER: settings.internal_token} if settings.internal_token else {}
        self._client = client or httpx.AsyncClient(
            base_url=settings.registry_url, headers=headers, timeout=settings.request_timeout_seconds
        )
        self._cache: OrderedDict[tuple[str, str], tuple[float, VersionRef]] = OrderedDict()
        self._size = size

    async def aclose(self) -> None:
        await self._client.aclose()

    def forget(self, model: str) -> None:
        for key in [k for k in self._cache if k[0] == model]:
            del self._cache[key]

    async def resolve(self, model: str, version: str) -> VersionRef:
        key = (model, version)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            self._cache.move_to_end(key)
            return hit[1]
        try:
            resp = await self._client.get(
                f"/api/v1/models/{model}/versions/{version}",
                headers={REQUEST_ID_HEADER: request_id_var.get() or ""},
            )
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"The registry is not reachable: {exc}") from exc
        body = resp.json()
        if resp.status_code >= 400:
            raise ModelServeError.from_problem(body, resp.status_code)
        ref = VersionRef(
            model=body["model"],
            version=body["version"],
            sha256=body["sha256"],
            description=ModelDescription.model_validate(body),
        )
        ttl = float("inf") if version.isdigit() else _MOVABLE_TTL
        self._cache[key] = (time.monotonic() + ttl, ref)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return ref
