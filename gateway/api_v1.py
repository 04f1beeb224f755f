"""REST `/api/v1` hot paths as a thin transport over the data plane: predict (fast return), submit, read,
cancel and list async jobs. Each route parses HTTP and answers what `GatewayDataPlane` returns."""

from __future__ import annotations

import math
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from gateway.async_jobs import JOB_STATUSES
from gateway.dataplane import GatewayDataPlane
from gateway.fastroute import FastRoute, header, principal_of
from shared.errors import ValidationFailed, field_error
from shared.paging import Limit, Offset

router = APIRouter(route_class=FastRoute)
"""The hot paths: `FastRoute`s (no dependency solving)."""
extra_router = APIRouter(tags=["jobs (wait return)"])
"""Colder paths with FastAPI's own query validation."""

_PREDICT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": {"inputs": {"X": [5.1, 3.5, 1.4, 0.2]}},
                "schema": {
                    "description": "{'inputs': {...}}, {'inputs': [{...}, ...]} or {'columns': [...], 'data': [[...]]}"
                },
            },
            "text/csv": {"schema": {"type": "string", "description": "a CSV file, one record a row"}},
        },
    }
}
_SUBMIT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"example": {"inputs": {"X": [5.1, 3.5, 1.4, 0.2]}, "ttl_seconds": 3600}}},
    }
}
_WAIT_DOC: dict[str, Any] = {
    "parameters": [
        {
            "name": "wait",
            "in": "query",
            "required": False,
            "description": "Seconds to wait for the job to end (≤ the server's job_wait_max_seconds)",
            "schema": {"type": "number", "minimum": 0, "default": 0},
        }
    ]
}


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem+json answers a route gives."""
    why = {
        404: "No such service (or job)",
        409: "The job is no longer queued",
        413: "The body is over this route's limit",
        429: "Too many predictions in flight for the service (see Retry-After)",
        503: "Paused, no ready replica, or the queue is unavailable (see Retry-After)",
    }
    problem = {"application/problem+json": {"schema": {"type": "object"}}}
    return {status: {"description": why[status], "content": problem} for status in statuses}


class JobAccepted(BaseModel):
    id: str
    status: str
    url: str


def _plane(request: Request) -> GatewayDataPlane:
    plane: GatewayDataPlane = request.app.state.dataplane
    return plane


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, "application/json")


def wait_of(query: bytes) -> float:
    """`wait` from a query string: a finite non-negative number of seconds (0 when absent); 422 otherwise."""
    if not query:
        return 0.0
    values = [v for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k == "wait"]
    if not values:
        return 0.0
    try:
        wait = float(values[-1])
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait) or wait < 0:
        raise ValidationFailed(
            "Invalid request: query.wait",
            errors=[field_error("query.wait", "a number of seconds ≥ 0", received=values[-1][:100])],
        )
    return wait


@router.post(
    "/api/v1/services/{name}/predict",
    summary="Predict synchronously (fast return)",
    tags=["services"],
    openapi_extra=_PREDICT_DOC,
    response_model=None,
    responses=_problems(404, 413, 429, 503),
)
async def predict(request: Request, name: str) -> Response:
    content_type = header(request.scope, b"content-type", b"application/json").decode("latin-1")
    body = await request.body()
    if content_type.split(";")[0].strip() != "application/json":  # files go to a replica as they are
        reply = await _plane(request).predict_file(name, body, content_type, principal_of(request))
    else:
        reply = await _plane(request).predict(name, body, principal_of(request))
    return Response(reply.body, reply.status, reply.headers or None, reply.media_type)


@router.post(
    "/api/v1/services/{name}/jobs",
    status_code=202,
    response_model=JobAccepted,
    tags=["jobs (wait return)"],
    summary="Submit a prediction to the queue (wait return)",
    description="Same bodies as predict, plus optional `callback_url` and `ttl_seconds`. Poll the returned url.",
    openapi_extra=_SUBMIT_DOC,
    responses=_problems(404, 413, 503),
)
async def submit(request: Request, name: str) -> Response:
    accepted = await _plane(request).submit(name, await request.body(), principal_of(request))
    return _json(accepted, 202, {"Location": accepted["url"]})


@router.get(
    "/api/v1/jobs/{job_id}",
    tags=["jobs (wait return)"],
    summary="Status and result of an async prediction (optionally long-poll)",
    openapi_extra=_WAIT_DOC,
    response_model=dict[str, Any],
    responses=_problems(404, 503),
)
async def read_job(request: Request, job_id: str) -> Response:
    wait = wait_of(request.scope["query_string"])
    return _json(await _plane(request).read_job(job_id, wait, principal_of(request)))


@router.delete(
    "/api/v1/jobs/{job_id}",
    tags=["jobs (wait return)"],
    summary="Cancel a queued async prediction",
    response_model=dict[str, Any],
    responses=_problems(404, 409, 503),
)
async def cancel_job(request: Request, job_id: str) -> Response:
    return _json(await _plane(request).cancel_job(job_id, principal_of(request)))


@extra_router.get("/api/v1/services/{name}/jobs", summary="Recent async predictions of a service")
async def list_jobs(
    name: str,
    request: Request,
    status: Annotated[str | None, Query(pattern=f"^({'|'.join(JOB_STATUSES)})$")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> dict[str, Any]:
    return await _plane(request).list_jobs(name, status, limit, offset)
