"""Calls from the gateway to internal processes over one long-lived aiohttp session (the hot path's client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shared.auth import INTERNAL_TOKEN_HEADER, PRINCIPAL_HEADER, Principal
from shared.errors import ModelServeError, ServiceUnavailable, UpstreamError
from shared.logging import REQUEST_ID_HEADER, request_id_var
from shared.settings import Settings

# Hop-by-hop headers (RFC 9110 §7.6.1) plus what the gateway itself must replace.
_DROP_REQUEST = {
    "host", "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "authorization", INTERNAL_TOKEN_HEADER.lower(), PRINCIPAL_HEADER.lower(),
    REQUEST_ID_HEADER.lower(), "expect",
}  # fmt: skip
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date", "x-request-id"}
_STREAM_THRESHOLD = 1024 * 1024


class Upstreams:
    """The gateway's client to the registry, the inference processes and their replicas."""

    def __init__(self, settings: Settings, connector_limit: int = 256) -> None:
        self.settings = settings
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=settings.request_timeout_seconds)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connector_limit, keepalive_timeout=60),
            timeout=timeout,
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
            auto_decompress=False,
        )

    async def close(self) -> None:
        await self.session.close()

    def internal_headers(self, principal: Principal | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.settings.internal_token:
            headers[INTERNAL_TOKEN_HEADER] = self.settings.internal_token
        rid = request_id_var.get()
        if rid:
            headers[REQUEST_ID_HEADER] = rid
        if principal is not None:
            headers[PRINCIPAL_HEADER] = principal.model_dump_json()
        return headers

    async def call_json(self, method: str, url: str, *, json: Any = None, timeout: float | None = None) -> Any:
        """An internal call answering JSON; a problem+json answer is raised as the same error."""
        try:
            async with self.session.request(
                method,
                url,
                json=json,
                headers=self.internal_headers(),
                timeout=aiohttp.ClientTimeout(total=timeout) if timeout else None,
            ) as resp:
                body = await resp.read()
                data = orjson.loads(body) if body else None
                if resp.status >= 400:
                    if isinstance(data, dict):
                        raise ModelServeError.from_problem(data, resp.status)
                    raise UpstreamError(f"{url} answered {resp.status}")
                return data
        except aiohttp.ClientError as exc:
            raise ServiceUnavailable(f"Could not reach an internal service: {exc}") from exc
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"{url} answered something that is not JSON") from exc

    async def forward(self, request: Request, base_url: str, path: str | None = None) -> Response:
        """Pass a request on unchanged (streaming its body both ways) and return the upstream's answer."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers.update(self.internal_headers(getattr(request.state, "principal", None)))
        url = base_url.rstrip("/") + (path if path is not None else request.url.path)
        has_body = request.method in {"POST", "PUT", "PATCH"}

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.stream():
                if chunk:
                    yield chunk

        try:
            resp = await self.session.request(
                request.method,
                url,
                params=list(request.query_params.multi_items()),
                headers=headers,
                data=body() if has_body else None,
                allow_redirects=False,
            )
        except aiohttp.ClientError as exc:
            raise ServiceUnavailable(f"Could not reach {base_url}: {exc}", headers={"Retry-After": "2"}) from exc
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}
        length = resp.content_length
        if length is not None and length <= _STREAM_THRESHOLD:
            try:
                content = await resp.read()
            finally:
                resp.release()
            return Response(content, status_code=resp.status, headers=out_headers)
        return StreamingResponse(
            resp.content.iter_chunked(64 * 1024),
            status_code=resp.status,
            headers=out_headers,
            background=BackgroundTask(resp.release),
        )
