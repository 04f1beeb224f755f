"""The public API called in-process: the console and the seed's `/daas` paths are thin layers over `/api/v1`.

Every call goes through the whole gateway app (auth middleware, scopes, validation, problem+json) with the
caller's own key, so neither layer has a check or a behaviour of its own. `httpx.ASGITransport` runs the app's
middleware stack on the same event loop; the app's lifespan state (`app.state`) is already set up by then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp

API_BASE = "http://gateway"
"""The in-process client's base URL: never resolved, the transport hands requests straight to the app."""


class ApiError(Exception):
    """A 4xx/5xx answer of the public API, kept whole so the caller can relay its problem+json."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.body = response.content
        self.content_type = response.headers.get("content-type", "application/problem+json")
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        self.problem: dict[str, Any] = problem if isinstance(problem, dict) else {}
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or self.problem.get("title") or f"HTTP {self.status}")

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors = self.problem.get("errors")
        return errors if isinstance(errors, list) else []


class Api:
    """`/api/v1` (and `/v2`) with one caller's key."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The raw answer; raises ApiError on a status of 400 or more."""
        response = await self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response)
        return response

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self.call(method, path, **kwargs)
        return response.json() if response.content else None

    async def all_pages(self, path: str) -> list[dict[str, Any]]:
        """Every item of a paged listing (`{items, total, limit, offset}`)."""
        items: list[dict[str, Any]] = []
        while True:
            page = await self.json("GET", path, params={"limit": 500, "offset": len(items)})
            items.extend(page["items"])
            if not page["items"] or len(items) >= page["total"]:
                return items


@asynccontextmanager
async def api_for(app: FastAPI | ASGIApp, key: str | None) -> AsyncIterator[Api]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # No timeout of its own: the call runs inside this process, bounded by the gateway's upstream timeouts.
    timeout = httpx.Timeout(None)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=API_BASE, headers=headers, timeout=timeout) as client:
        yield Api(client)
