"""Calls from the gateway to internal processes over one long-lived aiohttp session (the hot path's client)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import yarl
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.guards import unsafe_path
from shared.auth import INTERNAL_TOKEN_HEADER, PRINCIPAL_HEADER, Principal
from shared.errors import BadRequest, ModelServeError, ServiceUnavailable, UpstreamError
from shared.logging import REQUEST_ID_HEADER, request_id_var
from shared.settings import Settings

# Hop-by-hop headers (RFC 9110 §7.6.1) plus what the gateway itself must replace.
_DROP_REQUEST = {
    "host", "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "authorization", INTERNAL_TOKEN_HEADER.lower(), PRINCIPAL_HEADER.lower(),
    REQUEST_ID_HEADER.lower(), "expect",
}  # fmt: skip
ROUTE_HEADER = "x-modelserve-route"
"""An internal process names the route template that answered (for the gateway's metrics; never passed on)."""
_DROP_RESPONSE = {
    "connection", "keep-alive", "transfer-encoding", "content-length", "server", "date", "x-request-id", ROUTE_HEADER,
}  # fmt: skip
_STREAM_THRESHOLD = 1024 * 1024
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
log = logging.getLogger(__name__)


class _Template:
    """What the metrics middleware reads from `scope["route"]`: a route's template."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


_RETRY = {"Retry-After": "2"}


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

    def internal_headers(self, principal: Principal | None = None, request_id: str | None = None) -> dict[str, str]:
        """The token, the principal (when one caller is behind the call) and the request id (the current one's
        unless given: a coalesced batch names its own)."""
        headers: dict[str, str] = {}
        if self.settings.internal_token:
            headers[INTERNAL_TOKEN_HEADER] = self.settings.internal_token
        rid = request_id if request_id is not None else request_id_var.get()
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
            # The address stays in the log: callers, whatever their key, learn nothing of the internal network.
            log.warning("internal call %s %s failed: %s", method, url, exc)
            raise ServiceUnavailable("An internal service is unreachable; retry shortly", headers=_RETRY) from exc
        except orjson.JSONDecodeError as exc:
            log.warning("internal call %s %s answered something that is not JSON", method, url)
            raise UpstreamError("An internal service answered something that is not JSON") from exc

    async def forward(self, request: Request, base_url: str, path: str | None = None) -> Response:
        """Pass a request on unchanged (streaming its body both ways) and return the upstream's answer."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers.update(self.internal_headers(getattr(request.state, "principal", None)))
        path = path if path is not None else request.url.path
        # Checked again here, whatever routed the request: only public paths leave the gateway, and the URL is
        # built already encoded so no client library re-normalises it into another path.
        reason = unsafe_path(path)
        if reason is not None or not path.startswith(("/api/", "/v2/")):
            raise BadRequest(f"Invalid path: {reason or 'not a public path'}")
        url = yarl.URL(base_url.rstrip("/") + quote(path, safe=_PATH_SAFE), encoded=True)
        has_body = request.method in {"POST", "PUT", "PATCH"}

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.stream():
                if chunk:
                    yield chunk

        # An upload is inspected before it is answered (a PMML model loads in the JVM): wait as long as the
        # registry may take, not the internal calls' timeout, or a slow inspection answers 503 while it is stored.
        uploading = request.headers.get("content-type", "").startswith("multipart/form-data")
        timeout = aiohttp.ClientTimeout(sock_connect=5, sock_read=self.settings.upload_timeout_seconds)
        try:
            resp = await self.session.request(
                request.method,
                url,
                params=list(request.query_params.multi_items()),
                headers=headers,
                data=body() if has_body else None,
                allow_redirects=False,
                timeout=timeout if uploading else None,
            )
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, ModelServeError):  # the body's own error (e.g. over its size limit)
                raise exc.__cause__ from None
            log.warning("forwarding %s %s failed: %s", request.method, url, exc)
            raise ServiceUnavailable("An internal service is unreachable; retry shortly", headers=_RETRY) from exc
        template = resp.headers.get(ROUTE_HEADER)
        if template and template.startswith(("/api/", "/v2/")):
            request.scope["route"] = _Template(template)  # counted under the template that answered
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
