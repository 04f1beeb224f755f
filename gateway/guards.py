"""What the gateway refuses before any route sees a request: unsafe paths and bodies over their route's limit.

Both run as ASGI middleware, so every transport (the REST routes, V2, the console, the forwarding catch-all) is
covered by one check, and both answer problem+json without reading the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import BadRequest, PayloadTooLarge, field_error, problem_response
from shared.settings import Settings

_ENCODED_SEPARATOR = re.compile(rb"%(2f|5c)", re.IGNORECASE)
_UPLOAD_SLACK = 1024 * 1024
"""Multipart framing around an uploaded file: the registry enforces the file's own limit exactly."""


_SUSPECT = re.compile(r"(?:^|/)\.\.?(?:/|$)|[\x00-\x1f\x7f\\]")
"""One scan on the hot path; the reason is worked out only for a path that matches."""


def unsafe_path(path: str, raw_path: bytes | None = None) -> str | None:
    """Why a request path must not be routed (dot-segments, encoded separators, control characters), or None.

    Clients may send `/api/v1/../../internal/routes` as is (or as `%2e%2e`, which the server decodes): an HTTP
    client library would normalise it on the way out and reach the registry's internal routes.
    """
    if raw_path is not None and b"%" in raw_path and _ENCODED_SEPARATOR.search(raw_path):
        return "encoded separators (%2F, %5C) are not allowed in a path"
    if _SUSPECT.search(path) is None:
        return None
    if any(segment in (".", "..") for segment in path.split("/")):
        return "dot-segments ('.' or '..') are not allowed in a path"
    if "\\" in path:
        return "backslashes are not allowed in a path"
    return "control characters are not allowed in a path"


class PathGuard:
    """Answers 400 to a path that `unsafe_path` refuses, before routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            reason = unsafe_path(scope["path"], scope.get("raw_path"))
            if reason is not None:
                err = BadRequest(f"Invalid path: {reason}", errors=[field_error("path", reason)])
                await problem_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class _Limit:
    pattern: re.Pattern[str]
    limit: int
    what: str


def _limits(settings: Settings) -> tuple[_Limit, ...]:
    upload = settings.max_upload_bytes + _UPLOAD_SLACK
    rules = (
        (r"^/api/v1/services/[^/]+/predict$", settings.gateway_max_predict_bytes, "a predict body"),
        (r"^/api/v1/services/[^/]+/jobs$", settings.gateway_max_job_bytes, "a job submission"),
        (r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$", settings.gateway_max_infer_bytes, "an infer body"),
        (r"^/api/v1/models/[^/]+/versions/[^/]+/test$", settings.gateway_max_test_bytes, "a model test body"),
        (r"^/api/v1/(models|models/[^/]+/versions|datasets(/.*)?)$", upload, "an upload"),
        (r"^/(api/v1|v2)/", settings.gateway_max_json_bytes, "a request body"),
    )
    return tuple(_Limit(re.compile(p), limit, what) for p, limit, what in rules)


def _too_large(what: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{what[0].upper()}{what[1:]} may be at most {limit} bytes",
        errors=[field_error("body", f"at most {limit} bytes")],
    )


class BodyLimit:
    """Refuses a body over its route's limit with 413: at once from Content-Length, else while it streams in.

    A streamed (chunked) body that crosses the limit makes the next `receive()` raise `PayloadTooLarge`, which
    the route's error handling answers; nothing past the limit is read.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.rules = _limits(settings)

    def limit_for(self, method: str, path: str) -> _Limit | None:
        if method not in ("POST", "PUT", "PATCH"):
            return None
        return next((rule for rule in self.rules if rule.pattern.match(path)), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rule = self.limit_for(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if not length.isdigit():
                err = BadRequest("Invalid Content-Length", errors=[field_error("content-length", "an integer")])
                await problem_response(err, scope["path"])(scope, receive, send)
                return
            if int(length) > rule.limit:
                await problem_response(_too_large(rule.what, rule.limit), scope["path"])(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server reads no more than Content-Length
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > rule.limit:
                    raise _too_large(rule.what, rule.limit)
            return message

        await self.app(scope, counted, send)
