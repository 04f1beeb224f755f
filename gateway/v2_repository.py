"""The V2 model repository extension and Triton's model configuration, over services.

A "model" of the protocol is a service: the index lists services, load starts one (and waits until it
serves), unload pauses one. Start and pause go to the registry's own endpoints with the caller's principal,
so its rules and events apply exactly as for `/api/v1/services/{name}/start|pause`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from fastapi import FastAPI

from gateway.routing import Route
from gateway.v2_codec import model_metadata
from shared.auth import Principal
from shared.errors import ModelServeError, ServiceUnavailable, UpstreamError, ValidationFailed, field_error

_TRITON_TYPES = {"BYTES": "TYPE_STRING"}


def _state(route: Route) -> tuple[str, str]:
    """Triton's model state and reason for a service."""
    if route.paused:
        return "UNAVAILABLE", "paused"
    if route.replicas:
        return "READY", ""
    if route.status == "failed":
        return "UNAVAILABLE", "failed"
    return "LOADING", route.status


def index(app: FastAPI, principal: Principal | None, ready_only: bool = False) -> list[dict[str, Any]]:
    """`POST /v2/repository/index`: the services this caller may use, with their state."""
    models = []
    for name, route in sorted(app.state.routing.routes.items()):
        if principal is not None and not principal.allows("predict", name):
            continue
        state, reason = _state(route)
        if ready_only and state != "READY":
            continue
        entry = {"name": name, "version": "" if route.version is None else str(route.version), "state": state}
        models.append(entry | {"reason": reason})
    return models


def _refuse_files(parameters: Any) -> None:
    if not isinstance(parameters, dict):
        return
    bad = [k for k in parameters if k == "config" or str(k).startswith("file:")]
    if bad:
        errors = [
            field_error(f"parameters.{k}", "not supported: upload a model version with /api/v1/models") for k in bad
        ]
        raise ValidationFailed("A load request cannot carry a configuration or model files", errors=errors)


async def _service_call(app: FastAPI, name: str, action: str, principal: Principal | None) -> None:
    upstreams = app.state.upstreams
    url = f"{upstreams.settings.registry_url}/api/v1/services/{name}/{action}"
    try:
        async with upstreams.session.post(url, headers=upstreams.internal_headers(principal)) as resp:
            body = await resp.read()
            if resp.status >= 400:
                try:
                    problem = orjson.loads(body)
                except orjson.JSONDecodeError:
                    problem = None
                if isinstance(problem, dict):
                    raise ModelServeError.from_problem(problem, resp.status)
                raise UpstreamError(f"The registry answered {resp.status} to {action}")
    except aiohttp.ClientError as exc:
        raise ServiceUnavailable(f"Could not reach the registry: {exc}", headers={"Retry-After": "2"}) from exc
    await app.state.routing.refresh()  # read-your-writes, like the /api/v1 proxy


async def load(app: FastAPI, name: str, parameters: Any, principal: Principal | None) -> None:
    """Start the service and wait until a replica serves it (Triton's load returns once the model is ready)."""
    _refuse_files(parameters)
    await _service_call(app, name, "start", principal)
    timeout = app.state.settings.v2_load_timeout_seconds
    deadline = time.monotonic() + timeout
    while True:
        route = app.state.routing.get(name)
        if route is not None and route.replicas and not route.paused:
            return
        if route is not None and route.status == "failed":
            raise ServiceUnavailable(f"Service '{name}' failed to start", headers={"Retry-After": "5"})
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"Service '{name}' was started but has no ready replica after {timeout:g} s")
        await asyncio.sleep(0.2)
        await app.state.routing.refresh()


async def unload(app: FastAPI, name: str, principal: Principal | None) -> None:
    """Pause the service: its replicas stop, inference answers 503 until it is loaded again."""
    await _service_call(app, name, "pause", principal)


def model_config(name: str, version: int, model: dict[str, Any]) -> dict[str, Any]:
    """Triton's model configuration (the JSON form of `model_config.proto`) of a service's model version."""
    meta = model_metadata(name, version, model)
    optional = {spec["name"] for spec in model.get("inputs") or [] if spec.get("required", True) is False}

    def tensor(spec: dict[str, Any]) -> dict[str, Any]:
        datatype = _TRITON_TYPES.get(spec["datatype"], "TYPE_" + spec["datatype"])
        return {"name": spec["name"], "data_type": datatype, "dims": spec["shape"]}

    onnx = model.get("format") == "onnx"
    return {
        "name": name,
        "platform": meta["platform"],
        "backend": "onnxruntime" if onnx else "pmml",
        "version_policy": {"specific": {"versions": [version]}},
        # Dims carry the batch dimension themselves (-1): modelserve batches records, not Triton's scheduler.
        "max_batch_size": 0,
        "input": [tensor(s) | ({"optional": True} if s["name"] in optional else {}) for s in meta["inputs"]],
        "output": [tensor(s) for s in meta["outputs"]],
        "parameters": {"function_type": {"string_value": str(model.get("function_type") or "")}},
    }
