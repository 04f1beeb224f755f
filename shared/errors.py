"""One exception hierarchy, mapped in one place to RFC 9457 problem+json bodies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "https://modelserve.dev/problems/"


class ModelServeError(Exception):
    """Base of every error modelserve answers with; carries its HTTP status."""

    status: int = 500
    title: str = "Internal error"
    slug: str = "internal"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": _TYPE_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors is not None:
            body["errors"] = self.errors
        # Extras add members; they never replace the standard ones.
        body.update({k: v for k, v in self.extra.items() if k not in body})
        return body

    @classmethod
    def from_problem(cls, body: dict[str, Any], status: int) -> ModelServeError:
        """Rebuild an error answered by another modelserve process, keeping its status and fields."""
        err = cls(str(body.get("detail") or body.get("title") or "error"), errors=body.get("errors"))
        err.status = status
        err.title = str(body.get("title") or cls.title)
        slug = str(body.get("type", "")).removeprefix(_TYPE_BASE)
        err.slug = slug or cls.slug
        err.extra = {
            k: v for k, v in body.items() if k not in {"type", "title", "status", "detail", "errors", "instance"}
        }
        return err


class BadRequest(ModelServeError):
    status, title, slug = 400, "Bad request", "bad-request"


class Unauthorized(ModelServeError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str | None = None, **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kw)


class Forbidden(ModelServeError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(ModelServeError):
    status, title, slug = 404, "Not found", "not-found"


class MethodNotAllowed(ModelServeError):
    status, title, slug = 405, "Method not allowed", "method-not-allowed"


class Conflict(ModelServeError):
    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(ModelServeError):
    status, title, slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaType(ModelServeError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class ValidationFailed(ModelServeError):
    """Input that does not match what was expected; `errors` names each field."""

    status, title, slug = 422, "Validation failed", "validation"


class InvalidModel(ValidationFailed):
    """A model file that no engine can load; `detail` carries the engine's reason."""

    title, slug = "Invalid model", "invalid-model"


class UpstreamError(ModelServeError):
    status, title, slug = 502, "Bad gateway", "upstream"


class ServiceUnavailable(ModelServeError):
    status, title, slug = 503, "Service unavailable", "unavailable"


def field_error(
    loc: str | Sequence[str | int], msg: str, *, expected: Any = None, received: Any = None
) -> dict[str, Any]:
    """One entry of a problem's `errors` list."""
    entry: dict[str, Any] = {"field": loc if isinstance(loc, str) else ".".join(str(p) for p in loc), "message": msg}
    if expected is not None:
        entry["expected"] = expected
    if received is not None:
        entry["received"] = received
    return entry


def problem_response(err: ModelServeError, instance: str | None = None) -> JSONResponse:
    body = err.to_problem(instance)
    if instance is not None and instance.startswith("/v2"):
        body.setdefault("error", err.detail)  # the Open Inference Protocol's error member, which V2 clients read
    return JSONResponse(body, status_code=err.status, media_type=PROBLEM_JSON, headers=err.headers)


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 200 else text[:200] + "…"


MAX_DB_INT = 2**63 - 1
"""Largest integer a database column holds (SQLite INTEGER, PostgreSQL BIGINT)."""


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _too_big(value: str) -> bool:
    text = value.strip().lstrip("+-")
    return text.isdigit() and abs(int(value)) > MAX_DB_INT


def out_of_range(path_params: Mapping[str, Any], query_params: Mapping[str, Any]) -> ValidationFailed:
    """The 422 for an integer past what the database holds, naming the path or query fields that carry one."""
    fields = [f"path.{k}" for k, v in path_params.items() if _too_big(str(v))]
    fields += [f"query.{k}" for k, v in query_params.items() if _too_big(str(v))]
    limit = f"an integer between {-MAX_DB_INT - 1} and {MAX_DB_INT}"
    errors = [field_error(f, limit) for f in fields or ["body"]]
    return ValidationFailed("Invalid request: " + ", ".join(e["field"] for e in errors), errors=errors)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error, FastAPI's own 404/405/422 included, to problem+json."""

    async def on_modelserve(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ModelServeError)
        return problem_response(exc, request.url.path)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        mapping: dict[int, type[ModelServeError]] = {
            400: BadRequest,
            404: NotFound,
            405: MethodNotAllowed,
            401: Unauthorized,
            403: Forbidden,
            413: PayloadTooLarge,
        }
        cls = mapping.get(exc.status_code, ModelServeError)
        errors = [field_error("body", str(exc.detail))] if exc.status_code == 400 and exc.detail else None
        err = cls(str(exc.detail) if exc.detail else None, headers=dict(exc.headers or {}), errors=errors)
        err.status = exc.status_code
        if cls is ModelServeError:  # a status without a class of its own: its standard phrase, not "Internal error"
            err.title = _phrase(exc.status_code)
        return problem_response(err, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = []
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ())]
            if e.get("type") == "json_invalid":  # the body as a whole, not a position in it
                reason = (e.get("ctx") or {}).get("error")
                errors.append(field_error("body", f"not valid JSON: {reason}" if reason else "not valid JSON"))
                continue
            entry = field_error(loc, e.get("msg", "invalid"), expected=e.get("type"))
            if "input" in e and e.get("type") != "missing":
                entry["received"] = _short(e["input"])
            errors.append(entry)
        fields = ", ".join(sorted({err["field"] for err in errors}))
        return problem_response(ValidationFailed(f"Invalid request: {fields}", errors=errors), request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("modelserve.errors").exception("unhandled error on %s", request.url.path)
        return problem_response(ModelServeError("An unexpected error occurred"), request.url.path)

    async def on_redis_down(request: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("modelserve.errors").warning("Redis unavailable on %s: %s", request.url.path, exc)
        return problem_response(
            ServiceUnavailable("The queue is unavailable; retry shortly", headers={"Retry-After": "2"}),
            request.url.path,
        )

    async def on_overflow(request: Request, exc: Exception) -> JSONResponse:
        # An integer the database cannot hold (SQLite and PostgreSQL stop at 2^63 - 1): the caller's input.
        return problem_response(out_of_range(request.path_params, request.query_params), request.url.path)

    async def on_data_error(request: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL's "integer out of range" (SQLite's is the OverflowError above); other data errors stay 500s.
        if "out of range" in str(getattr(exc, "orig", exc)):
            return problem_response(out_of_range(request.path_params, request.query_params), request.url.path)
        return await on_unexpected(request, exc)

    app.add_exception_handler(ModelServeError, on_modelserve)
    app.add_exception_handler(OverflowError, on_overflow)
    app.add_exception_handler(sqlalchemy.exc.DataError, on_data_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, on_redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, on_redis_down)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
