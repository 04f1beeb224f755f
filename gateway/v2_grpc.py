"""The Open Inference Protocol over gRPC: KServe's `inference.GRPCInferenceService`, served by `grpc.aio`.

The service definition is Triton's superset of KServe's (tritonclient ships the generated classes); the
methods KServe defines plus Triton's model configuration, statistics and repository calls are served,
the rest (shared memory, tracing, logging, streaming) answer UNIMPLEMENTED. Every call goes through the
same functions as REST (`gateway.v2.infer` and friends) and the same auth: the metadata `authorization:
Bearer <key>` is verified by the gateway's `KeyCache` and judged by `gateway.auth.required_scope` on the
REST path the call stands for, so a key can do over gRPC exactly what it can over HTTP.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import orjson
from fastapi import FastAPI
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from gateway import v2, v2_binary, v2_repository, v2_stats
from gateway.auth import required_scope
from gateway.v2_codec import model_metadata, server_metadata
from shared.auth import Principal, bearer_token
from shared.errors import Forbidden, ModelServeError, Unauthorized, ValidationFailed, field_error
from shared.settings import Settings

log = logging.getLogger(__name__)
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Typed contents field per datatype (FP16/BF16 travel only as raw contents).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def status_code(status: int) -> grpc.StatusCode:
    if status in _CODES:
        return _CODES[status]
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


def error_message(err: ModelServeError) -> str:
    """The problem's detail, with each field error after it (gRPC status details are one string)."""
    parts = [f"{e.get('field')}: {e.get('message')}" for e in err.errors or [] if isinstance(e, dict)]
    return err.detail + (" (" + "; ".join(parts[:10]) + ")" if parts else "")


def _parameter(value: Any) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def _parameters(params: Any) -> dict[str, Any]:
    return {key: _parameter(value) for key, value in params.items()}


def _set_parameter(target: Any, value: Any) -> bool:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    elif isinstance(value, str):
        target.string_param = value
    else:
        return False
    return True


def request_json(request: service_pb2.ModelInferRequest) -> dict[str, Any]:
    """A `ModelInferRequest` in the protocol's JSON form, raw and typed contents decoded to flat `data`."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        error = field_error(
            "raw_input_contents", "one entry per input", expected=len(request.inputs), received=len(raw)
        )
        raise ValidationFailed("Invalid inference request: raw_input_contents", errors=[error])
    inputs, errors = [], []
    for i, tensor in enumerate(request.inputs):
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.parameters:
            item["parameters"] = _parameters(tensor.parameters)
        try:
            if raw:
                item["data"] = v2_binary.decode_tensor(raw[i], tensor.datatype, list(tensor.shape))
            else:
                field = _CONTENTS.get(tensor.datatype)
                if field is None:
                    raise v2_binary.Undecodable(
                        f"{tensor.datatype or 'this datatype'} travels only in raw_input_contents"
                    )
                values = list(getattr(tensor.contents, field))
                item["data"] = [v.decode() for v in values] if tensor.datatype == "BYTES" else values
        except (v2_binary.Undecodable, UnicodeDecodeError) as exc:
            errors.append(field_error(f"inputs[{i}].data", str(exc), expected=tensor.datatype))
        inputs.append(item)
    if errors:
        raise ValidationFailed("Invalid inference request: " + errors[0]["field"], errors=errors)
    body: dict[str, Any] = {"inputs": inputs}
    if request.id:
        body["id"] = request.id
    if request.parameters:
        body["parameters"] = _parameters(request.parameters)
    if request.outputs:
        body["outputs"] = [{"name": out.name} for out in request.outputs]
    return body


def response_proto(answer: dict[str, Any]) -> service_pb2.ModelInferResponse:
    """The JSON answer as a `ModelInferResponse` with raw output contents (as Triton answers)."""
    response = service_pb2.ModelInferResponse(
        model_name=answer["model_name"], model_version=answer["model_version"], id=answer.get("id", "")
    )
    for output in answer["outputs"]:
        tensor = response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        for key, value in (output.get("parameters") or {}).items():
            if not _set_parameter(tensor.parameters[key], value):  # a list (the classes): as JSON text
                tensor.parameters[key].string_param = orjson.dumps(value).decode()
        try:
            response.raw_output_contents.append(v2_binary.encode_tensor(output["data"], output["datatype"]))
        except v2_binary.Undecodable as exc:
            raise ModelServeError(f"Output {output['name']!r} cannot travel over gRPC: {exc}; use /api/v1") from exc
    return response


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def _authorise(self, context: grpc.aio.ServicerContext, method: str, path: str) -> Principal | None:
        """The caller, judged by the rules of the REST call `method path` stands for."""
        needed, service, protected = required_scope(method, path)
        if not protected:
            return None
        metadata = dict(context.invocation_metadata() or ())
        key = bearer_token(str(metadata.get("authorization") or "") or None)
        if key is None:
            raise Unauthorized("An API key is required: send the metadata 'authorization: Bearer <key>'")
        principal: Principal = await self.app.state.keys.principal(key)
        if needed is not None and not principal.allows(needed, service):
            what = f"the '{needed}' scope" + (f" for service '{service}'" if service and needed != "admin" else "")
            raise Forbidden(f"This key lacks {what}")
        return principal

    async def _call(self, context: grpc.aio.ServicerContext, coroutine: Any) -> Any:
        try:
            return await coroutine
        except ModelServeError as err:
            await context.abort(status_code(err.status), error_message(err))
        except Exception:
            log.exception("unexpected error in a gRPC call")
            await context.abort(grpc.StatusCode.INTERNAL, "An unexpected error occurred")

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=bool(self.app.state.routing.loaded))

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return json_format.ParseDict(server_metadata(self.app.version), service_pb2.ServerMetadataResponse())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            await self._authorise(context, "GET", f"/v2/models/{request.name}/ready")
            route = await v2.known_route(self.app, request.name, request.version or None)
            return service_pb2.ModelReadyResponse(ready=bool(route.replicas) and not route.paused)

        return await self._call(context, run())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            await self._authorise(context, "GET", f"/v2/models/{request.name}")
            route = await v2.known_route(self.app, request.name, request.version or None)
            meta = model_metadata(request.name, route.version or 0, v2.signature(route))
            for tensor in meta["inputs"] + meta["outputs"]:
                tensor.pop("parameters", None)  # TensorMetadata has no parameters
            return json_format.ParseDict(meta, service_pb2.ModelMetadataResponse())

        return await self._call(context, run())

    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            await self._authorise(context, "GET", f"/v2/models/{request.name}/config")
            route = await v2.known_route(self.app, request.name, request.version or None)
            config = v2_repository.model_config(request.name, route.version or 0, v2.signature(route))
            return service_pb2.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

        return await self._call(context, run())

    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            if request.name:
                await self._authorise(context, "GET", f"/v2/models/{request.name}/stats")
                route = await v2.known_route(self.app, request.name, request.version or None)
                wanted = {request.name: route.version}
            else:
                principal = await self._authorise(context, "GET", "/v2/models/stats")
                wanted = await v2.allowed_versions(self.app, principal)
            stats = {"model_stats": v2_stats.model_statistics(wanted)}
            return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True)

        return await self._call(context, run())

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            principal = await self._authorise(context, "POST", "/v2/repository/index")
            await self.app.state.routing.refresh()
            models = v2_repository.index(self.app, principal, request.ready)
            return json_format.ParseDict({"models": models}, service_pb2.RepositoryIndexResponse())

        return await self._call(context, run())

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            principal = await self._authorise(context, "POST", f"/v2/repository/models/{request.model_name}/load")
            parameters = {k: _parameter(v) for k, v in request.parameters.items()}
            await v2_repository.load(self.app, request.model_name, parameters, principal)
            return service_pb2.RepositoryModelLoadResponse()

        return await self._call(context, run())

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            principal = await self._authorise(context, "POST", f"/v2/repository/models/{request.model_name}/unload")
            await v2_repository.unload(self.app, request.model_name, principal)
            return service_pb2.RepositoryModelUnloadResponse()

        return await self._call(context, run())

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def run() -> Any:
            path = f"/v2/models/{request.model_name}/infer"
            principal = await self._authorise(context, "POST", path)
            body = request_json(request)
            answer = await v2.infer(self.app, request.model_name, request.model_version or None, body, principal)
            return response_proto(answer)

        return await self._call(context, run())


async def start_server(app: FastAPI, settings: Settings) -> grpc.aio.Server | None:
    """Start the gRPC server on `settings.grpc_port` (None if that is unset or 0)."""
    if not settings.grpc_port:
        return None
    size = settings.grpc_max_message_bytes
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(app), server)
    server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    await server.start()
    log.info("gRPC inference service listening", extra={"port": settings.grpc_port})
    return server


async def stop_server(server: grpc.aio.Server | None) -> None:
    if server is not None:
        await server.stop(grace=2)
