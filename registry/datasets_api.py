"""`/api/v1/datasets`: upload or fetch tabular files, describe, download and delete them.

The fetch worker reports back through `/internal/datasets/{name}/…` (it never touches the database itself).
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError
from rq import Queue
from rq.serializers import JSONSerializer
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from registry import idempotency
from registry.catalog import check_name
from registry.database import SessionDep
from registry.datasets import DatasetCatalog, DatasetInfo, DatasetUsageCheck, InvalidDataset, inspect_dataset
from registry.schemas import Page
from registry.tables import DatasetDetail, DatasetPublic
from shared.artifacts import ArtifactStore, LocalArtifactStore, StagedArtifact
from shared.errors import (
    BadRequest,
    Conflict,
    ModelServeError,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationFailed,
    field_error,
)
from shared.paging import Limit, Offset
from shared.redis import BATCH_QUEUE, sync_redis
from shared.settings import Settings
from shared.uploads import receive_upload

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])
internal_router = APIRouter(prefix="/internal/datasets", include_in_schema=False)

FETCH_TASK = "jobs.fetch.fetch_remote_dataset"
"""The RQ task (by dotted path: the JSON serializer enqueues functions by name) that fetches a remote dataset."""
_MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}
_MAX_JSON_BODY = 64 * 1024


def dataset_store(request: Request) -> ArtifactStore:
    """The dataset store, made on first use (`settings.datasets_dir`, content-addressed like model artifacts)."""
    store = getattr(request.app.state, "dataset_store", None)
    if store is None:
        store = request.app.state.dataset_store = LocalArtifactStore(request.app.state.settings.datasets_dir)
    return store  # type: ignore[no-any-return]


def dataset_usage(request: Request) -> DatasetUsageCheck | None:
    """The check that keeps a dataset in use from being deleted: the batch-jobs code sets `app.state.dataset_usage`."""
    return getattr(request.app.state, "dataset_usage", None)


def get_datasets(request: Request, session: SessionDep) -> DatasetCatalog:
    return DatasetCatalog(session, dataset_store(request), dataset_usage(request))


DatasetsDep = Annotated[DatasetCatalog, Depends(get_datasets)]


class DatasetFetch(BaseModel):
    """Fetch a remote http(s) file as a dataset, in a worker."""

    name: str
    source_url: str = Field(max_length=4096)
    description: str = Field(default="", max_length=10_000)


_CREATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "CSV, JSON lines or Parquet"},
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                    },
                }
            },
            "application/json": {"schema": DatasetFetch.model_json_schema()},
        },
    },
    "responses": {"202": {"description": "Accepted: the file is fetched by a worker (status `fetching`)"}},
}


@router.post(
    "",
    status_code=201,
    response_model=DatasetDetail,
    summary="Upload a dataset file (multipart), or fetch one from an http(s) URL (JSON, answers 202)",
    openapi_extra=_CREATE_DOC,
)
async def create_dataset(request: Request, response: Response) -> DatasetDetail:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        return await _create_remote(request, response)
    return await _upload(request, response)


async def _upload(request: Request, response: Response) -> DatasetDetail:
    settings: Settings = request.app.state.settings
    store = dataset_store(request)
    key = idempotency.read_key(request.headers, settings.idempotency_key_max_length)
    form = await receive_upload(request, store, settings.max_upload_bytes)
    try:
        errors = []
        name = form.fields.get("name", "").strip()
        if not name:
            errors.append(field_error("name", "required"))
        description = form.fields.get("description", "")
        if len(description) > 10_000:
            errors.append(field_error("description", "longer than 10,000 characters"))
        if form.file is None:
            errors.append(field_error("file", "required: the dataset file as a multipart file part"))
        if errors:
            raise ValidationFailed("Invalid upload: " + ", ".join(e["field"] for e in errors), errors=errors)
        check_name(name)
        assert form.file is not None
        staged = form.file
        upload_key = None
        if key is not None:
            upload_key = (key, idempotency.fingerprint(staged.sha256, {"name": name, "description": description}))
            replayed = await run_in_threadpool(_replay, request, *upload_key)
            if replayed is not None:  # a retry of an upload that was stored: the same answer, no second copy
                store.discard(staged)
                response.headers["Location"] = f"/api/v1/datasets/{replayed.name}"
                return replayed
        await run_in_threadpool(_ensure_absent, request, name)
        info = await run_in_threadpool(
            inspect_dataset, staged.path, settings.dataset_preview_rows, settings.upload_inspection_timeout_seconds
        )
    except BaseException:
        if form.file is not None:
            store.discard(form.file)
        raise

    def save() -> DatasetDetail:
        with Session(request.app.state.engine) as session:
            catalog = DatasetCatalog(session, store, dataset_usage(request))
            try:
                row = catalog.add(name, staged, info, source="local", description=description, upload_key=upload_key)
            except Conflict:
                # The same upload, retried while the first was still being inspected, got there first.
                if upload_key is not None and (replayed := _replay(request, *upload_key)) is not None:
                    return replayed
                raise
            return catalog.detail(row)

    try:
        detail = await run_in_threadpool(save)
    finally:
        store.discard(staged)  # no-op once committed
    response.headers["Location"] = f"/api/v1/datasets/{detail.name}"
    return detail


def _replay(request: Request, key: str, print_: str) -> DatasetDetail | None:
    """The dataset an earlier upload with this key made (None when the key is new, or its dataset is gone)."""
    with Session(request.app.state.engine) as session:
        ref = idempotency.find(session, idempotency.DATASETS, key, print_)
        if ref is None:
            return None
        catalog = DatasetCatalog(session, dataset_store(request))
        if not catalog.exists(ref):
            idempotency.forget(session, idempotency.DATASETS, key)
            return None
        return catalog.detail(catalog.get(ref))


def _ensure_absent(request: Request, name: str) -> None:
    with Session(request.app.state.engine) as session:
        DatasetCatalog(session, dataset_store(request)).ensure_absent(name)


async def _create_remote(request: Request, response: Response) -> DatasetDetail:
    settings: Settings = request.app.state.settings
    body = await _json_body(request)
    try:
        fetch = DatasetFetch.model_validate_json(body)
    except PydanticValidationError as exc:
        errors = [field_error([str(p) for p in e["loc"]] or "body", e["msg"]) for e in exc.errors()]
        raise ValidationFailed("Invalid request: " + ", ".join(e["field"] for e in errors), errors=errors) from None
    check_name(fetch.name)
    _check_source_url(fetch.source_url)
    if not settings.redis_url:
        raise ServiceUnavailable("No queue is configured (MODELSERVE_REDIS_URL): remote datasets cannot be fetched")

    def create() -> DatasetDetail:
        with Session(request.app.state.engine) as session:
            catalog = DatasetCatalog(session, dataset_store(request))
            row = catalog.create_remote(fetch.name, fetch.source_url, fetch.description)
            try:
                _enqueue_fetch(settings, fetch.name, fetch.source_url)
            except Exception as exc:
                catalog.fail_fetch(fetch.name, f"could not queue the fetch: {exc}")
                raise ServiceUnavailable(f"The job queue is unavailable: {exc}") from exc
            return catalog.detail(row)

    detail = await run_in_threadpool(create)
    response.status_code = 202
    response.headers["Location"] = f"/api/v1/datasets/{detail.name}"
    log.info("remote dataset queued", extra={"dataset": detail.name})
    return detail


async def _json_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > _MAX_JSON_BODY:
            raise PayloadTooLarge(f"A JSON body is limited to {_MAX_JSON_BODY} bytes")
    return bytes(body)


def _check_source_url(url: str) -> None:
    parts = urlsplit(url)
    reason = None
    if parts.scheme.lower() not in {"http", "https"}:
        reason = f"only http and https URLs can be fetched, not {parts.scheme or 'a relative URL'!r}"
    elif not parts.hostname:
        reason = "the URL has no host"
    if reason:
        raise ValidationFailed(
            f"Invalid source_url: {reason}",
            errors=[field_error("source_url", reason, expected="http(s)://host/path", received=url[:200])],
        )


def _enqueue_fetch(settings: Settings, name: str, url: str) -> None:
    connection = sync_redis(settings)
    try:
        queue = Queue(BATCH_QUEUE, connection=connection, serializer=JSONSerializer)
        queue.enqueue(
            FETCH_TASK,
            name,
            url,
            job_timeout=int(2 * settings.dataset_fetch_timeout_seconds + 10 * settings.request_timeout_seconds),
            result_ttl=settings.job_result_ttl_seconds,
            failure_ttl=settings.job_result_ttl_seconds,
            description=f"fetch dataset {name}",
        )
    finally:
        connection.close()


@router.get("", response_model=Page[DatasetPublic], summary="List datasets")
def list_datasets(
    datasets: DatasetsDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[DatasetPublic]:
    return datasets.list(limit, offset)


@router.get("/{name}", response_model=DatasetDetail, summary="Describe a dataset: columns, types and first rows")
def get_dataset(name: str, datasets: DatasetsDep) -> DatasetDetail:
    return datasets.detail(datasets.get(name))


@router.get("/{name}/download", summary="Download the original file, byte-identical")
def download_dataset(name: str, datasets: DatasetsDep) -> FileResponse:
    row = datasets.get(name)
    path = datasets.ready_path(row)
    fmt = row.format or ""
    return FileResponse(
        path,
        media_type=_MEDIA_TYPES.get(fmt, "application/octet-stream"),
        filename=f"{row.name}.{fmt}" if fmt else row.name,
        headers={"ETag": f'"{row.sha256}"', "X-Content-SHA256": row.sha256 or ""},
    )


@router.delete("/{name}", status_code=204, summary="Delete a dataset and its file (409 while a job uses it)")
async def delete_dataset(name: str, datasets: DatasetsDep) -> Response:
    await run_in_threadpool(datasets.delete, name)
    return Response(status_code=204)


# --- internal: the fetch worker (and batch jobs) report here ------------------------------------------------


class FetchFailure(BaseModel):
    reason: str = Field(min_length=1, max_length=4000)
    source_url: str | None = None


@internal_router.put("/{name}/content", response_model=DatasetDetail)
async def put_content(
    name: str,
    request: Request,
    source: Literal["remote", "job"] = "remote",
    source_url: str | None = None,
    description: str = "",
) -> DatasetDetail:
    """The body becomes the dataset's file: a `fetching` remote dataset turns `ready` (or `failed` with the reason
    when the file is refused); with `source=job` a new dataset is registered from a job's output."""
    settings: Settings = request.app.state.settings
    store = dataset_store(request)
    await run_in_threadpool(_check_target, request, name, source, source_url)
    try:
        staged = await _receive_body(request, store, settings.max_upload_bytes)
    except ModelServeError as exc:
        await _fail_remote(request, name, source, source_url, exc.detail)
        raise
    try:
        info = await run_in_threadpool(inspect_dataset, staged.path, settings.dataset_preview_rows)
    except InvalidDataset as exc:
        store.discard(staged)
        await _fail_remote(request, name, source, source_url, exc.reason)
        raise
    except BaseException:
        store.discard(staged)
        raise

    def save(info: DatasetInfo) -> DatasetDetail:
        with Session(request.app.state.engine) as session:
            catalog = DatasetCatalog(session, store, dataset_usage(request))
            if source == "job":
                row = catalog.add(name, staged, info, source="job", description=description)
            else:
                row = catalog.complete_fetch(name, staged, info, source_url)
            return catalog.detail(row)

    try:
        return await run_in_threadpool(save, info)
    finally:
        store.discard(staged)  # no-op once committed


def _check_target(request: Request, name: str, source: str, source_url: str | None) -> None:
    with Session(request.app.state.engine) as session:
        catalog = DatasetCatalog(session, dataset_store(request))
        if source == "job":
            check_name(name)
            catalog.ensure_absent(name)
        else:
            catalog.fetching(name, source_url)


async def _receive_body(request: Request, store: ArtifactStore, max_bytes: int) -> StagedArtifact:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"The file ({declared} bytes) is larger than the limit of {max_bytes} bytes")
    writer = store.writer(max_bytes)
    try:
        async for chunk in request.stream():
            writer.write(chunk)  # aborts itself past the limit
    except PayloadTooLarge:
        raise
    except Exception as exc:
        writer.abort()
        raise BadRequest(f"The body did not arrive whole: {exc}") from exc
    return writer.finish()


async def _fail_remote(request: Request, name: str, source: str, source_url: str | None, reason: str) -> None:
    if source != "remote":
        return

    def fail() -> None:
        with Session(request.app.state.engine) as session:
            DatasetCatalog(session, dataset_store(request)).fail_fetch(name, reason, source_url)

    try:
        await run_in_threadpool(fail)
    except ModelServeError:
        log.warning("dataset %s: could not record the failure %r", name, reason)


@internal_router.post("/{name}/failed", response_model=DatasetDetail)
def post_failed(name: str, body: FetchFailure, datasets: DatasetsDep) -> DatasetDetail:
    """The fetch worker gave up: the dataset turns `failed` with the reason."""
    return datasets.detail(datasets.fail_fetch(name, body.reason, body.source_url))
