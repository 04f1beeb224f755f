"""The gateway's hot paths answered without FastAPI's routing: predict, submit a job, read a job.

py-spy on the gateway under load showed more CPU in FastAPI's routing, endpoint signature handling and its
exception and exit-stack layers than in the gateway's own work, and the gateway is what limits throughput.
`FastLane` runs inside the request-id, metrics and auth middleware, so these requests are logged, counted under
their route's template and authorised like any other, and it calls the same functions as the FastAPI routes
(which stay, for the OpenAPI description and for every case the lane passes on: non-JSON bodies, unusual
query strings).
"""

from __future__ import annotations

import logging
import math
import re
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.async_jobs import read_job, submit_job
from gateway.services import predict_json
from shared.errors import ModelServeError, problem_response

log = logging.getLogger(__name__)

_SERVICE_CALL = re.compile(r"^/api/v1/services/(?P<name>[^/]+)/(?P<what>predict|jobs)$")
_JOB = re.compile(r"^/api/v1/jobs/(?P<job_id>[^/]+)$")
# What the metrics middleware reads from `scope["route"]`: the routes' templates.
_PREDICT_ROUTE = SimpleNamespace(path="/api/v1/services/{name}/predict")
_SUBMIT_ROUTE = SimpleNamespace(path="/api/v1/services/{name}/jobs")
_JOB_ROUTE = SimpleNamespace(path="/api/v1/jobs/{job_id}")


def _is_json(scope: Scope) -> bool:
    content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"application/json")
    return bool(content_type.split(b";")[0].strip() == b"application/json")


def _wait(query: bytes) -> float | None:
    """`wait` from a query string of nothing else, when it is a plain non-negative number; else None."""
    if not query:
        return 0.0
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] != "wait":
        return None
    try:
        wait = float(pairs[0][1])
    except ValueError:
        return None
    return wait if math.isfinite(wait) and wait >= 0 else None


class FastLane:
    """ASGI middleware for the three hot paths; everything else goes on to FastAPI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            if method == "POST" and (match := _SERVICE_CALL.match(path)) and _is_json(scope):
                predict = match["what"] == "predict"
                scope["route"] = _PREDICT_ROUTE if predict else _SUBMIT_ROUTE
                handler = self._predict if predict else self._submit
                await self._answer(handler, scope, receive, send, match["name"])
                return
            if method == "GET" and (match := _JOB.match(path)) and (wait := _wait(scope["query_string"])) is not None:
                scope["route"] = _JOB_ROUTE
                await self._answer(self._read, scope, receive, send, match["job_id"], wait)
                return
        await self.app(scope, receive, send)

    async def _answer(self, handler: Any, scope: Scope, receive: Receive, send: Send, *args: Any) -> None:
        request = Request(scope, receive)
        try:
            response: Response = await handler(request, *args)
        except ModelServeError as err:
            response = problem_response(err, scope["path"])
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            response = problem_response(ModelServeError("Internal error"), scope["path"])
        await response(scope, receive, send)

    @staticmethod
    async def _predict(request: Request, name: str) -> Response:
        return await predict_json(request, name, await request.body())

    @staticmethod
    async def _submit(request: Request, name: str) -> Response:
        accepted = await submit_job(request, name, await request.body())
        return Response(orjson.dumps(accepted), 202, {"Location": accepted["url"]}, "application/json")

    @staticmethod
    async def _read(request: Request, job_id: str, wait: float) -> Response:
        return Response(orjson.dumps(await read_job(request, job_id, wait)), media_type="application/json")
