"""Errors the client raises: one class per kind of failure, each carrying the server's problem+json fields.

The CLI maps the classes to exit codes (see `docs/cli.md`), so a script can tell a typo from an outage.
"""

from __future__ import annotations

from typing import Any

import httpx


class ModelServeError(Exception):
    """Base of every error the client raises."""

    exit_code = 1


class ConfigError(ModelServeError):
    """No URL or key configured, or an unreadable config file (a usage error)."""

    exit_code = 2


class ConnectError(ModelServeError):
    """The platform could not be reached (not started, wrong URL)."""

    exit_code = 5


class WaitTimeout(ModelServeError):
    """A `wait=` or `--wait` ran out of time before the thing waited for happened."""

    exit_code = 5


class ApiError(ModelServeError):
    """The platform answered an error: the RFC 9457 problem's fields, as sent."""

    exit_code = 4

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        type: str | None = None,
        instance: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.type = type
        self.instance = instance
        self.extra = extra or {}
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """`404 Not found: Model 'x' does not exist [inputs[0].X: expected …]` — what the CLI prints."""
        text = f"{self.status} {self.title}"
        if self.detail and self.detail != self.title:
            text += f": {self.detail}"
        fields = [_field_text(e) for e in self.errors]
        if fields:
            text += " [" + "; ".join(fields) + "]"
        return text


class AuthError(ApiError):
    """401 or 403: no key, a wrong or revoked key, or a key without the scope."""

    exit_code = 3


class NotFoundError(ApiError):
    """404: no such model, service, dataset, job or key."""


class ConflictError(ApiError):
    """409: the name exists, or the thing is in use."""


class ValidationError(ApiError):
    """400/422: the request was refused; `errors` names each field."""


class ServerError(ApiError):
    """5xx: the platform failed or is not ready (e.g. a service without ready replicas)."""

    exit_code = 5


def _field_text(error: dict[str, Any]) -> str:
    field = error.get("field") or error.get("loc") or "?"
    if isinstance(field, list):
        field = ".".join(str(p) for p in field)
    text = f"{field}: {error.get('message') or error.get('msg') or 'invalid'}"
    if "expected" in error:
        text += f" (expected {_short(error['expected'])}"
        text += f", got {_short(error['received'])})" if "received" in error else ")"
    elif "received" in error:
        text += f" (got {_short(error['received'])})"
    return text


def _short(value: Any, limit: int = 80) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_from_response(response: httpx.Response) -> ApiError:
    """The exception for an error response: problem+json when the server sent one, else the status line."""
    body: Any = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"title": response.reason_phrase or "Error", "detail": (response.text or "")[:500] or None}
    status = response.status_code
    kind: type[ApiError]
    if status in (401, 403):
        kind = AuthError
    elif status == 404:
        kind = NotFoundError
    elif status == 409:
        kind = ConflictError
    elif status in (400, 422):
        kind = ValidationError
    elif status >= 500:
        kind = ServerError
    else:
        kind = ApiError
    known = {"type", "title", "status", "detail", "errors", "instance"}
    errors = body.get("errors")
    return kind(
        status=status,
        title=str(body.get("title") or response.reason_phrase or "Error"),
        detail=body.get("detail"),
        errors=errors if isinstance(errors, list) else None,
        type=body.get("type"),
        instance=body.get("instance"),
        extra={k: v for k, v in body.items() if k not in known},
    )
