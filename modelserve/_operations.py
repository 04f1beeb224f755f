"""Every API operation once, as a generator of HTTP steps: `Client` and `AsyncClient` only drive them.

An operation yields a `Call` (and receives the response) or a `Sleep` (and receives None), and returns its
result. Waiting loops, paging and error mapping are written once here for both the sync and async clients.

Long module: one small generator per API operation (about fifty), grouped by resource; splitting them would
only scatter the one list a reader checks for completeness.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel

from modelserve.errors import NotFoundError, ServerError, WaitTimeout, error_from_response
from modelserve.types import (
    Alias,
    ApiKey,
    ApiKeyCreated,
    AsyncJob,
    BatchJob,
    Dataset,
    DatasetDetail,
    ModelDetail,
    ModelSummary,
    ModelVersion,
    Page,
    Predictions,
    Run,
    Service,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Progress = Callable[[int, int | None], None]
"""`progress(done, total)`: bytes sent/received, or rows scored (total None while unknown)."""
RunProgress = Callable[[Run], None]
Records = Any
"""One record (a dict), a list of records, a pandas DataFrame, or a `{"inputs"|"columns": …}` body."""
API = "/api/v1"


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, Any] | None = None
    timeout: float | None = None
    stream_to: Path | None = None
    """Write the response body to this file (streamed), reporting to `progress`."""
    progress: Progress | None = None
    ok: tuple[int, ...] = field(default_factory=tuple)
    """Statuses handed back to the operation instead of raised (e.g. 503 while waiting for readiness)."""


@dataclass
class Sleep:
    seconds: float


Op = Generator[Call | Sleep, Any, T]


def checked(response: httpx.Response, ok: tuple[int, ...] = ()) -> httpx.Response:
    if response.status_code >= 400 and response.status_code not in ok:
        raise error_from_response(response)
    return response


def _call(step: Call) -> Generator[Call, Any, httpx.Response]:
    response: httpx.Response = yield step
    return checked(response, step.ok)


def _model(kind: type[M], step: Call) -> Op[M]:
    response = yield from _call(step)
    return kind.model_validate(response.json())


def _page(kind: type[M], step: Call) -> Op[Page[M]]:
    response = yield from _call(step)
    return Page[kind].model_validate(response.json())  # type: ignore[valid-type]


def _none(step: Call) -> Op[None]:
    yield from _call(step)
    return None


class ProgressReader:
    """A binary file that reports how much of it has been read (httpx reads uploads through it)."""

    def __init__(self, file: IO[bytes], progress: Progress | None) -> None:
        self._file = file
        self._progress = progress
        self._total = os.fstat(file.fileno()).st_size
        self._done = 0

    def fileno(self) -> int:
        return self._file.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._file.seek(offset, whence)
        self._done = position
        return position

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._done += len(chunk)
        if self._progress is not None:
            self._progress(min(self._done, self._total), self._total)
        return chunk


def _upload(path: Path | str, progress: Progress | None, content_type: str = "application/octet-stream") -> Any:
    file_path = Path(path)
    return (file_path.name, ProgressReader(file_path.open("rb"), progress), content_type)


def close_files(step: Call) -> None:
    for value in (step.files or {}).values():
        reader = value[1] if isinstance(value, tuple) else value
        if isinstance(reader, ProgressReader):
            reader.close()


def _jsonable_records(records: Records) -> Any:
    if hasattr(records, "to_json") and hasattr(records, "columns"):  # a pandas DataFrame, without importing pandas
        return json.loads(records.to_json(orient="records", double_precision=15))
    return records


def predict_body(records: Records) -> dict[str, Any]:
    """The predict/test JSON body for `records` (a body given as such is sent as it is)."""
    records = _jsonable_records(records)
    if isinstance(records, Mapping) and ("inputs" in records or "columns" in records):
        return dict(records)
    if isinstance(records, Mapping):
        return {"inputs": [dict(records)]}
    if isinstance(records, Iterable) and not isinstance(records, str | bytes):
        return {"inputs": list(records)}
    raise TypeError("records must be a dict, a list of dicts, a pandas DataFrame or a predict body")


def _records_file(path: Path) -> dict[str, Any]:
    content_type = "text/csv" if path.suffix.lower() == ".csv" else "application/json"
    return {"file": (path.name, path.read_bytes(), content_type)}


def _records_call(path: str, records: Records | Path) -> Call:
    if isinstance(records, Path):
        return Call("POST", path, files=_records_file(records), timeout=300)
    return Call("POST", path, json=predict_body(records), timeout=300)


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# --- models -------------------------------------------------------------------------------------------------


def upload_model(
    file: Path | str, name: str, description: str | None, function_type: str | None, progress: Progress | None
) -> Op[ModelVersion]:
    step = Call(
        "POST",
        f"{API}/models",
        data=_clean({"name": name, "description": description, "function_type": function_type}),
        files={"file": _upload(file, progress)},
        timeout=600,
    )
    try:
        return (yield from _model(ModelVersion, step))
    finally:
        close_files(step)


def list_models(limit: int, offset: int) -> Op[Page[ModelSummary]]:
    return _page(ModelSummary, Call("GET", f"{API}/models", params={"limit": limit, "offset": offset}))


def get_model(name: str) -> Op[ModelDetail]:
    return _model(ModelDetail, Call("GET", f"{API}/models/{name}"))


def update_model(name: str, description: str) -> Op[ModelDetail]:
    return _model(ModelDetail, Call("PATCH", f"{API}/models/{name}", json={"description": description}))


def delete_model(name: str) -> Op[None]:
    return _none(Call("DELETE", f"{API}/models/{name}"))


def list_versions(name: str) -> Op[list[ModelVersion]]:
    response = yield from _call(Call("GET", f"{API}/models/{name}/versions"))
    body = response.json()
    items = body["items"] if isinstance(body, dict) else body  # a page or (older servers) a bare list
    return [ModelVersion.model_validate(item) for item in items]


def describe(name: str, version: str | int) -> Op[ModelVersion]:
    return _model(ModelVersion, Call("GET", f"{API}/models/{name}/versions/{version}"))


def delete_version(name: str, version: str | int) -> Op[None]:
    return _none(Call("DELETE", f"{API}/models/{name}/versions/{version}"))


def example(name: str, version: str | int) -> Op[dict[str, Any]]:
    response = yield from _call(Call("GET", f"{API}/models/{name}/versions/{version}/example"))
    result: dict[str, Any] = response.json()
    return result


def download_model(name: str, version: str | int, dest: Path, progress: Progress | None) -> Op[Path]:
    yield from _call(
        Call("GET", f"{API}/models/{name}/versions/{version}/artifact", stream_to=dest, progress=progress, timeout=600)
    )
    return dest


def set_alias(name: str, alias: str, version: int) -> Op[Alias]:
    return _model(Alias, Call("PUT", f"{API}/models/{name}/aliases/{alias}", json={"version": version}))


def delete_alias(name: str, alias: str) -> Op[None]:
    return _none(Call("DELETE", f"{API}/models/{name}/aliases/{alias}"))


def test(name: str, records: Records | Path, version: str | int) -> Op[Predictions]:
    return _model(Predictions, _records_call(f"{API}/models/{name}/versions/{version}/test", records))


# --- services -----------------------------------------------------------------------------------------------


def deploy(body: dict[str, Any], wait: bool, timeout: float) -> Op[Service]:
    params = {"wait": min(timeout, 60)} if wait else None
    service = yield from _model(
        Service, Call("POST", f"{API}/services", json=_clean(body), params=params, timeout=timeout + 30)
    )
    if wait:
        service = yield from wait_service(service.name, timeout)
    return service


def wait_service(name: str, timeout: float, interval: float = 0.5) -> Op[Service]:
    """Until the service runs with every replica ready and the gateway routes to it (its V2 `ready` says so)."""
    waited = 0.0
    while True:
        service = yield from get_service(name)
        if service.status == "failed":
            raise ServerError(500, "Service failed", service.reason or f"service '{name}' failed to start")
        if service.status == "running" and service.ready_replicas >= service.replicas:
            ready = yield from _call(Call("GET", f"/v2/models/{name}/ready", ok=(404, 503)))
            if ready.status_code == 200:
                return service
        if waited >= timeout:
            raise WaitTimeout(f"service '{name}' is still {service.status} after {timeout:g} s")
        yield Sleep(interval)
        waited += interval


def list_services(limit: int, offset: int) -> Op[Page[Service]]:
    return _page(Service, Call("GET", f"{API}/services", params={"limit": limit, "offset": offset}))


def get_service(name: str) -> Op[Service]:
    return _model(Service, Call("GET", f"{API}/services/{name}"))


def update_service(name: str, patch: dict[str, Any]) -> Op[Service]:
    return _model(Service, Call("PATCH", f"{API}/services/{name}", json=_clean(patch)))


def service_action(name: str, action: str) -> Op[Service]:
    return _model(Service, Call("POST", f"{API}/services/{name}/{action}"))


def delete_service(name: str) -> Op[None]:
    return _none(Call("DELETE", f"{API}/services/{name}"))


def restart_replica(name: str, replica_id: str) -> Op[Service]:
    return _model(Service, Call("POST", f"{API}/services/{name}/replicas/{replica_id}/restart"))


def predict(service: str, records: Records | Path) -> Op[Predictions]:
    return _model(Predictions, _records_call(f"{API}/services/{service}/predict", records))


# --- async predictions (wait return) ------------------------------------------------------------------------


def submit(service: str, records: Records, callback_url: str | None, ttl_seconds: int | None) -> Op[AsyncJob]:
    body = {**predict_body(records), **_clean({"callback_url": callback_url, "ttl_seconds": ttl_seconds})}
    return _model(AsyncJob, Call("POST", f"{API}/services/{service}/jobs", json=body))


def result(job_id: str, wait: float = 0) -> Op[AsyncJob]:
    params = {"wait": wait} if wait else None
    return _model(AsyncJob, Call("GET", f"{API}/jobs/{job_id}", params=params, timeout=wait + 30))


def wait(job_id: str, timeout: float) -> Op[AsyncJob]:
    left = timeout
    while True:
        step = min(left, 30.0)  # the server caps one long poll (job_wait_max_seconds, 60 s by default)
        job = yield from result(job_id, step)
        left -= step
        if job.done:
            return job
        if left <= 0:
            raise WaitTimeout(f"job '{job_id}' is still {job.status} after {timeout:g} s")


def cancel(job_id: str) -> Op[AsyncJob]:
    return _model(AsyncJob, Call("DELETE", f"{API}/jobs/{job_id}"))


def list_async_jobs(service: str, status: str | None, limit: int, offset: int) -> Op[Page[AsyncJob]]:
    params = _clean({"status": status, "limit": limit, "offset": offset})
    return _page(AsyncJob, Call("GET", f"{API}/services/{service}/jobs", params=params))


# --- datasets -----------------------------------------------------------------------------------------------


def upload_dataset(
    file: Path | str, name: str, description: str | None, progress: Progress | None
) -> Op[DatasetDetail]:
    step = Call(
        "POST",
        f"{API}/datasets",
        data=_clean({"name": name, "description": description}),
        files={"file": _upload(file, progress)},
        timeout=600,
    )
    try:
        return (yield from _model(DatasetDetail, step))
    finally:
        close_files(step)


def fetch_dataset(name: str, source_url: str, description: str | None) -> Op[DatasetDetail]:
    body = _clean({"name": name, "source_url": source_url, "description": description})
    return _model(DatasetDetail, Call("POST", f"{API}/datasets", json=body))


def list_datasets(limit: int, offset: int) -> Op[Page[Dataset]]:
    return _page(Dataset, Call("GET", f"{API}/datasets", params={"limit": limit, "offset": offset}))


def get_dataset(name: str) -> Op[DatasetDetail]:
    return _model(DatasetDetail, Call("GET", f"{API}/datasets/{name}"))


def download_dataset(name: str, dest: Path, progress: Progress | None) -> Op[Path]:
    yield from _call(Call("GET", f"{API}/datasets/{name}/download", stream_to=dest, progress=progress, timeout=600))
    return dest


def delete_dataset(name: str) -> Op[None]:
    return _none(Call("DELETE", f"{API}/datasets/{name}"))


# --- batch jobs and runs ------------------------------------------------------------------------------------


def create_job(body: dict[str, Any]) -> Op[BatchJob]:
    return _model(BatchJob, Call("POST", f"{API}/batch-jobs", json=_clean(body)))


def list_jobs(limit: int, offset: int) -> Op[Page[BatchJob]]:
    return _page(BatchJob, Call("GET", f"{API}/batch-jobs", params={"limit": limit, "offset": offset}))


def get_job(name: str) -> Op[BatchJob]:
    return _model(BatchJob, Call("GET", f"{API}/batch-jobs/{name}"))


def update_job(name: str, patch: dict[str, Any]) -> Op[BatchJob]:
    return _model(BatchJob, Call("PATCH", f"{API}/batch-jobs/{name}", json=_clean(patch)))


def delete_job(name: str) -> Op[None]:
    return _none(Call("DELETE", f"{API}/batch-jobs/{name}"))


def schedule_action(name: str, action: str) -> Op[BatchJob]:
    return _model(BatchJob, Call("POST", f"{API}/batch-jobs/{name}/schedule/{action}"))


def generate_script(body: dict[str, Any]) -> Op[str]:
    response = yield from _call(Call("POST", f"{API}/batch-jobs/generate-script", json=_clean(body)))
    return response.text


def run_job(name: str) -> Op[Run]:
    return _model(Run, Call("POST", f"{API}/batch-jobs/{name}/runs"))


def list_runs(job: str, limit: int, offset: int) -> Op[Page[Run]]:
    return _page(Run, Call("GET", f"{API}/batch-jobs/{job}/runs", params={"limit": limit, "offset": offset}))


def get_run(job: str, run: int) -> Op[Run]:
    return _model(Run, Call("GET", f"{API}/batch-jobs/{job}/runs/{run}"))


def run_action(job: str, run: int, action: str) -> Op[Run]:
    return _model(Run, Call("POST", f"{API}/batch-jobs/{job}/runs/{run}/{action}"))


def delete_run(job: str, run: int) -> Op[None]:
    return _none(Call("DELETE", f"{API}/batch-jobs/{job}/runs/{run}"))


def wait_run(job: str, run: int, timeout: float, progress: RunProgress | None, interval: float = 0.5) -> Op[Run]:
    """Until the run ends (succeeded, failed or stopped) or pauses; `progress(run)` after every poll."""
    waited = 0.0
    while True:
        current = yield from get_run(job, run)
        if progress is not None:
            progress(current)
        if current.done or current.status == "paused":
            return current
        if waited >= timeout:
            raise WaitTimeout(f"run {job}#{run} is still {current.status} after {timeout:g} s")
        yield Sleep(interval)
        waited += interval


def download_result(job: str, run: int, dest: Path, progress: Progress | None) -> Op[Path]:
    yield from _call(
        Call("GET", f"{API}/batch-jobs/{job}/runs/{run}/result", stream_to=dest, progress=progress, timeout=600)
    )
    return dest


# --- keys ---------------------------------------------------------------------------------------------------


def create_key(name: str, scopes: list[str], services: list[str] | None) -> Op[ApiKeyCreated]:
    body = _clean({"name": name, "scopes": scopes, "services": services})
    return _model(ApiKeyCreated, Call("POST", f"{API}/keys", json=body))


def list_keys(include_revoked: bool, limit: int, offset: int) -> Op[Page[ApiKey]]:
    params = {"include_revoked": include_revoked, "limit": limit, "offset": offset}
    return _page(ApiKey, Call("GET", f"{API}/keys", params=params))


def get_key(key_id: str) -> Op[ApiKey]:
    return _model(ApiKey, Call("GET", f"{API}/keys/{key_id}"))


def revoke_key(key_id: str) -> Op[None]:
    return _none(Call("DELETE", f"{API}/keys/{key_id}"))


def exists(op: Op[Any]) -> Op[bool]:
    """True when the operation succeeds, False on 404."""
    try:
        yield from op
    except NotFoundError:
        return False
    return True
