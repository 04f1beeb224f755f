"""`/api/v1/models`: upload, describe, download, alias and delete model versions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from inference.runtimes import load_runtime
from inference.runtimes.base import FunctionType, ModelDescription
from inference.runtimes.examples import example_body
from registry import idempotency
from registry.catalog import ModelCatalog, check_name
from registry.database import SessionDep
from registry.events import publish_event
from registry.schemas import (
    AliasPublic,
    AliasTarget,
    ModelDetail,
    ModelPatch,
    ModelSummary,
    ModelVersionPublic,
    Page,
)
from registry.services import alias_followers
from registry.services_api import roll_followers
from shared.errors import Conflict, InvalidModel, ModelServeError, ValidationFailed, field_error
from shared.paging import Limit, Offset
from shared.settings import Settings
from shared.uploads import receive_upload

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/models", tags=["models"])
_FUNCTION_TYPES = get_args(FunctionType)
_MEDIA_TYPES = {"pmml": "application/xml", "onnx": "application/octet-stream"}
_EXTENSIONS = {"pmml": ".pmml", "onnx": ".onnx"}


def get_catalog(request: Request, session: SessionDep) -> ModelCatalog:
    return ModelCatalog(session, request.app.state.store, request.app.state.usage_check)


CatalogDep = Annotated[ModelCatalog, Depends(get_catalog)]


def inspect_artifact(path: Path, settings: Settings, function_type: FunctionType | None) -> ModelDescription:
    """Load the file once through the runtime layer to prove it works, and keep what it describes."""
    try:
        runtime = load_runtime(path, settings, function_type=function_type)
    except ModelServeError:
        raise
    except Exception as exc:  # an engine's own exception type: still the file's fault
        raise InvalidModel(f"The model does not load: {type(exc).__name__}: {exc}"[:2000]) from exc
    try:
        return runtime.description
    finally:
        runtime.unload()


_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "A PMML or ONNX file"},
                        "name": {"type": "string", "description": "Model name; an existing name gets a new version"},
                        "description": {"type": "string"},
                        "function_type": {"type": "string", "enum": list(_FUNCTION_TYPES)},
                        "force": {
                            "type": "boolean",
                            "description": "Store a new version even when this file is already one of the model's",
                        },
                    },
                }
            }
        },
    }
}


class UploadedVersion(ModelVersionPublic):
    """The version an upload made (201), or the version already stored from the same file (200)."""

    existing: bool = False
    """True when the file's sha256 is already one of the model's versions and that version is answered."""


_TRUE = frozenset({"1", "true", "yes", "on"})


def _existing_version(request: Request, name: str, sha256: str, function_type: str | None) -> UploadedVersion | None:
    with Session(request.app.state.engine) as session:
        catalog = ModelCatalog(session, request.app.state.store, request.app.state.usage_check)
        found = catalog.version_with_artifact(name, sha256, function_type)
        if found is None:
            return None
        return UploadedVersion(**catalog.version_public(*found).model_dump(), existing=True)


@router.post(
    "",
    status_code=201,
    response_model=UploadedVersion,
    summary="Upload a model file (PMML or ONNX) as a new version",
    openapi_extra=_UPLOAD_DOC,
    responses={200: {"model": UploadedVersion, "description": "The same file is already a version of the model"}},
)
async def upload_model(request: Request, response: Response) -> UploadedVersion:
    """A new version from the file; the same file (sha256) as an existing version of the model answers that
    version with 200 and `existing: true`, unless `force=true` (form field or query parameter)."""
    settings: Settings = request.app.state.settings
    store = request.app.state.store
    key = idempotency.read_key(request.headers, settings.idempotency_key_max_length)
    reserved = False
    form = await receive_upload(request, store, settings.max_upload_bytes)
    force_value = form.fields.get("force") or request.query_params.get("force") or ""
    try:
        errors = []
        name = form.fields.get("name", "").strip()
        if not name:
            errors.append(field_error("name", "required"))
        function_type = form.fields.get("function_type") or None
        if function_type is not None and function_type not in _FUNCTION_TYPES:
            errors.append(field_error("function_type", "unknown function type", expected=list(_FUNCTION_TYPES),
                                      received=function_type[:100]))  # fmt: skip
        if form.file is None:
            errors.append(field_error("file", "required: the model file as a multipart file part"))
        elif form.file.size_bytes == 0:
            errors.append(field_error("file", "the file is empty"))
        if errors:
            raise ValidationFailed("Invalid upload: " + ", ".join(e["field"] for e in errors), errors=errors)
        check_name(name)
        assert form.file is not None
        if key is not None:  # a retry answers the version its first try made (registry/idempotency.py)
            fields = {"name": name, "description": form.fields.get("description"), "function_type": function_type}
            print_ = idempotency.fingerprint(form.file.sha256, fields)
            replayed = await run_in_threadpool(idempotency.begin_model_upload, request.app.state.engine, store, key,
                                               print_, settings.upload_timeout_seconds)  # fmt: skip
            if replayed is not None:
                store.discard(form.file)
                response.headers["Location"] = f"/api/v1/models/{replayed.model}/versions/{replayed.version}"
                return UploadedVersion(**replayed.model_dump())
            reserved = True
        if force_value.strip().lower() not in _TRUE:  # after the key's replay: a retry answers as its first try
            existing = await run_in_threadpool(_existing_version, request, name, form.file.sha256, function_type)
            if existing is not None:
                store.discard(form.file)
                if reserved and key is not None:
                    await run_in_threadpool(idempotency.finish_model_upload, request.app.state.engine, key,
                                            existing.model, existing.version)  # fmt: skip
                    reserved = False
                response.status_code = 200
                response.headers["Location"] = f"/api/v1/models/{existing.model}/versions/{existing.version}"
                return existing
        described = await run_in_threadpool(inspect_artifact, form.file.path, settings, function_type)  # type: ignore[arg-type]
    except BaseException:
        if form.file is not None:
            store.discard(form.file)
        if reserved:
            await run_in_threadpool(idempotency.abandon_model_upload, request.app.state.engine, key)
        raise

    def save() -> UploadedVersion:
        assert form.file is not None
        with Session(request.app.state.engine) as session:
            catalog = ModelCatalog(session, store, request.app.state.usage_check)
            model, row = catalog.add_version(
                name, form.file, described, filename=form.filename, description=form.fields.get("description")
            )
            return UploadedVersion(**catalog.version_public(model, row).model_dump())

    try:
        public = await run_in_threadpool(save)
    except BaseException:
        store.discard(form.file)  # no-op once committed
        if reserved:
            await run_in_threadpool(idempotency.abandon_model_upload, request.app.state.engine, key)
        raise
    if key is not None:
        await run_in_threadpool(idempotency.finish_model_upload, request.app.state.engine, key, public.model,
                                public.version)  # fmt: skip
    response.headers["Location"] = f"/api/v1/models/{public.model}/versions/{public.version}"
    log.info("model uploaded", extra={"model": public.model, "version": public.version, "sha256": public.sha256})
    await publish_event(request.app, "model", public.model)
    return public


@router.get("", response_model=Page[ModelSummary], summary="List models")
def list_models(
    catalog: CatalogDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[ModelSummary]:
    return catalog.list_models(limit, offset)


@router.get("/{name}", response_model=ModelDetail, summary="Describe a model and its latest version")
def get_model(name: str, catalog: CatalogDep) -> ModelDetail:
    return catalog.detail(name)


@router.patch("/{name}", response_model=ModelDetail, summary="Change a model's description")
async def patch_model(name: str, body: ModelPatch, request: Request, catalog: CatalogDep) -> ModelDetail:
    catalog.set_description(name, body.description)
    return catalog.detail(name)


@router.delete("/{name}", status_code=204, summary="Delete a model, its versions and their files")
async def delete_model(name: str, request: Request, catalog: CatalogDep) -> Response:
    await run_in_threadpool(catalog.delete_model, name)
    await publish_event(request.app, "model", name)
    return Response(status_code=204)


@router.get("/{name}/versions", response_model=list[ModelVersionPublic], summary="List a model's versions")
def list_versions(name: str, catalog: CatalogDep) -> list[ModelVersionPublic]:
    return catalog.list_versions(name)


@router.get(
    "/{name}/versions/{version}",
    response_model=ModelVersionPublic,
    summary="Describe a version (a number, `latest`, or an alias)",
)
def get_version(name: str, version: str, catalog: CatalogDep) -> ModelVersionPublic:
    model, row = catalog.resolve(name, version)
    return catalog.version_public(model, row)


@router.get("/{name}/versions/{version}/artifact", summary="Download the original file, byte-identical")
def download_artifact(name: str, version: str, catalog: CatalogDep) -> FileResponse:
    model, row = catalog.resolve(name, version)
    path = catalog.store.local_path(row.sha256)
    return FileResponse(
        path,
        media_type=_MEDIA_TYPES.get(row.format, "application/octet-stream"),
        filename=f"{model.name}-v{row.version}{_EXTENSIONS.get(row.format, '')}",
        headers={"ETag": f'"{row.sha256}"', "X-Content-SHA256": row.sha256},
    )


@router.get("/{name}/versions/{version}/example", summary="A valid example request body for this version")
def get_example(name: str, version: str, catalog: CatalogDep) -> dict[str, Any]:
    _, row = catalog.resolve(name, version)
    return example_body(catalog.description_of(row))


@router.delete("/{name}/versions/{version}", status_code=204, summary="Delete one version and its file")
async def delete_version(name: str, version: str, request: Request, catalog: CatalogDep) -> Response:
    await run_in_threadpool(catalog.delete_version, name, version)
    await publish_event(request.app, "model", name)
    return Response(status_code=204)


@router.put("/{name}/aliases/{alias}", response_model=AliasPublic, summary="Point an alias at a version")
async def put_alias(name: str, alias: str, body: AliasTarget, request: Request, catalog: CatalogDep) -> AliasPublic:
    row = catalog.set_alias(name, alias, body.version)
    await publish_event(request.app, "alias", name, alias=alias, version=row.version)
    await roll_followers(request, catalog.session, name)
    return AliasPublic(model=name, alias=alias, version=row.version)


@router.delete("/{name}/aliases/{alias}", status_code=204, summary="Remove an alias")
async def delete_alias(name: str, alias: str, request: Request, catalog: CatalogDep) -> Response:
    followers = alias_followers(catalog.session, catalog.get_model(name), alias)
    if followers:
        raise Conflict(f"Alias '{alias}' is followed by service(s): {', '.join(followers)}", services=followers)
    catalog.delete_alias(name, alias)
    await publish_event(request.app, "alias", name, alias=alias, version=None)
    return Response(status_code=204)
