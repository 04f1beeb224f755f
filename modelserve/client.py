"""`Client` and `AsyncClient`: every modelserve API operation as a typed method (httpx underneath).

    from modelserve import Client
    with Client("http://127.0.0.1:8000", api_key="msk_...") as ms:
        ms.upload_model("iris.onnx", "iris")
        ms.deploy("iris", replicas=2, wait=True)
        print(ms.predict("iris", [{"sepal_length": 5.1, ...}]).predictions)

The operations themselves live in `modelserve._operations` (written once for both clients).

Long module: one short method per API operation, twice (sync and async) so that each client's methods are
typed and documented where users look; each method is a one-line call of the shared operation.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from modelserve import _operations as ops
from modelserve._operations import Call, Op, Progress, Records, RunProgress, Sleep, checked
from modelserve.config import resolve
from modelserve.errors import ConnectError
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
DEFAULT_TIMEOUT = 60.0


def _headers(api_key: str | None) -> dict[str, str]:
    from modelserve import __version__

    headers = {"User-Agent": f"modelserve-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _request_kwargs(step: Call) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"params": step.params, "data": step.data, "files": step.files}
    if step.json is not None:
        kwargs["json"] = step.json
    if step.timeout is not None:
        kwargs["timeout"] = step.timeout
    return kwargs


class _Writer:
    """Streams a response body into a file, reporting progress; the file appears only once complete."""

    def __init__(self, step: Call, response: httpx.Response) -> None:
        assert step.stream_to is not None
        self.dest = step.stream_to
        self.partial = self.dest.with_name(self.dest.name + ".part")
        self.progress = step.progress
        length = response.headers.get("content-length")
        self.total = int(length) if length and length.isdigit() else None
        self.done = 0
        self.out = self.partial.open("wb")

    def write(self, chunk: bytes) -> None:
        self.out.write(chunk)
        self.done += len(chunk)
        if self.progress is not None:
            self.progress(self.done, self.total)

    def close(self, ok: bool) -> None:
        self.out.close()
        if ok:
            self.partial.replace(self.dest)
        else:
            self.partial.unlink(missing_ok=True)


class Client:
    """A synchronous client. `url`/`api_key` default to `MODELSERVE_URL`/`MODELSERVE_API_KEY`, then to what
    `modelserve login` stored. Errors are `modelserve.errors.ApiError` subclasses carrying the problem fields."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        config = resolve(url, api_key)
        self.url = config.url
        self._http = httpx.Client(
            base_url=config.url, headers=_headers(config.api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, step: Call) -> httpx.Response:
        try:
            if step.stream_to is None:
                return self._http.request(step.method, step.path, **_request_kwargs(step))
            with self._http.stream(step.method, step.path, **_request_kwargs(step)) as response:
                if response.status_code >= 400:
                    response.read()
                    return checked(response, step.ok)
                writer, ok = _Writer(step, response), False
                try:
                    for chunk in response.iter_bytes(1 << 16):
                        writer.write(chunk)
                    ok = True
                finally:
                    writer.close(ok)
                return response
        except httpx.TransportError as exc:
            raise ConnectError(f"cannot reach {self.url}: {exc}") from exc

    def _run(self, op: Op[T]) -> T:
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                # A failed send is thrown into the operation, so its own clean-up (open upload files) runs.
                step = op.throw(error) if error is not None else op.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            error = None
            try:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    value = None
                else:
                    value = self._send(step)
            except Exception as exc:
                error = exc

    # --- models ---------------------------------------------------------------------------------------------

    def upload_model(
        self,
        file: Path | str,
        name: str,
        *,
        description: str | None = None,
        function_type: str | None = None,
        progress: Progress | None = None,
    ) -> ModelVersion:
        """Upload a PMML or ONNX file as a new version of `name`; returns the version as the server described it."""
        return self._run(ops.upload_model(file, name, description, function_type, progress))

    def list_models(self, *, limit: int = 50, offset: int = 0) -> Page[ModelSummary]:
        return self._run(ops.list_models(limit, offset))

    def get_model(self, name: str) -> ModelDetail:
        return self._run(ops.get_model(name))

    def update_model(self, name: str, *, description: str) -> ModelDetail:
        return self._run(ops.update_model(name, description))

    def delete_model(self, name: str) -> None:
        return self._run(ops.delete_model(name))

    def list_versions(self, name: str) -> list[ModelVersion]:
        return self._run(ops.list_versions(name))

    def describe(self, name: str, version: str | int = "latest") -> ModelVersion:
        """A version (number, `latest` or an alias): engine, algorithm, inputs, outputs, class labels."""
        return self._run(ops.describe(name, version))

    def delete_version(self, name: str, version: str | int) -> None:
        return self._run(ops.delete_version(name, version))

    def example(self, name: str, version: str | int = "latest") -> dict[str, Any]:
        """A valid request body for this version."""
        return self._run(ops.example(name, version))

    def download_model(
        self, name: str, dest: Path | str, version: str | int = "latest", *, progress: Progress | None = None
    ) -> Path:
        return self._run(ops.download_model(name, version, Path(dest), progress))

    def set_alias(self, name: str, alias: str, version: int) -> Alias:
        return self._run(ops.set_alias(name, alias, version))

    def delete_alias(self, name: str, alias: str) -> None:
        return self._run(ops.delete_alias(name, alias))

    def test(self, name: str, records: Records | Path, version: str | int = "latest") -> Predictions:
        """Predict with a model version without deploying it (records, a DataFrame, or a CSV/JSON file Path)."""
        return self._run(ops.test(name, records, version))

    # --- services -------------------------------------------------------------------------------------------

    def deploy(
        self,
        model: str,
        name: str | None = None,
        *,
        version: int | None = None,
        alias: str | None = None,
        replicas: int = 1,
        cpu_reserve: float | None = None,
        memory_reserve: int | None = None,
        description: str | None = None,
        wait: bool = False,
        timeout: float = 120,
    ) -> Service:
        """Deploy a model version as a service (named like the model unless `name`); `wait=True` returns once
        every replica is ready and the gateway routes to it, so the first predict does not answer 503."""
        body = {
            "name": name or model,
            "model": model,
            "version": version,
            "alias": alias,
            "replicas": replicas,
            "cpu_reserve": cpu_reserve,
            "memory_reserve": memory_reserve,
            "description": description,
        }
        return self._run(ops.deploy(body, wait, timeout))

    def wait_service(self, name: str, timeout: float = 120) -> Service:
        return self._run(ops.wait_service(name, timeout))

    def list_services(self, *, limit: int = 50, offset: int = 0) -> Page[Service]:
        return self._run(ops.list_services(limit, offset))

    def get_service(self, name: str) -> Service:
        return self._run(ops.get_service(name))

    def update_service(
        self,
        name: str,
        *,
        version: int | None = None,
        alias: str | None = None,
        replicas: int | None = None,
        cpu_reserve: float | None = None,
        memory_reserve: int | None = None,
        description: str | None = None,
    ) -> Service:
        patch = {
            "version": version,
            "alias": alias,
            "replicas": replicas,
            "cpu_reserve": cpu_reserve,
            "memory_reserve": memory_reserve,
            "description": description,
        }
        return self._run(ops.update_service(name, patch))

    def scale(self, name: str, replicas: int) -> Service:
        return self._run(ops.update_service(name, {"replicas": replicas}))

    def pause(self, name: str) -> Service:
        return self._run(ops.service_action(name, "pause"))

    def start(self, name: str) -> Service:
        return self._run(ops.service_action(name, "start"))

    def delete_service(self, name: str) -> None:
        return self._run(ops.delete_service(name))

    def restart_replica(self, name: str, replica_id: str) -> Service:
        return self._run(ops.restart_replica(name, replica_id))

    def predict(self, service: str, records: Records | Path) -> Predictions:
        """Predict synchronously: one record (dict), a list of records, a DataFrame, or a CSV/JSON file Path."""
        return self._run(ops.predict(service, records))

    # --- async predictions (wait return) --------------------------------------------------------------------

    def submit(
        self, service: str, records: Records, *, callback_url: str | None = None, ttl_seconds: int | None = None
    ) -> AsyncJob:
        """Queue a prediction; returns at once with the job's id (see `result` and `wait`)."""
        return self._run(ops.submit(service, records, callback_url, ttl_seconds))

    def result(self, job_id: str, *, wait: float = 0) -> AsyncJob:
        """The job now, or after up to `wait` seconds (long poll, at most the server's limit)."""
        return self._run(ops.result(job_id, wait))

    def wait(self, job_id: str, timeout: float = 120) -> AsyncJob:
        """Until the job ends (succeeded, failed or cancelled)."""
        return self._run(ops.wait(job_id, timeout))

    def cancel(self, job_id: str) -> AsyncJob:
        return self._run(ops.cancel(job_id))

    def list_async_jobs(
        self, service: str, *, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[AsyncJob]:
        return self._run(ops.list_async_jobs(service, status, limit, offset))

    # --- datasets -------------------------------------------------------------------------------------------

    def upload_dataset(
        self, file: Path | str, name: str, *, description: str | None = None, progress: Progress | None = None
    ) -> DatasetDetail:
        """Upload a CSV, JSON lines or Parquet file as a dataset."""
        return self._run(ops.upload_dataset(file, name, description, progress))

    def fetch_dataset(self, name: str, source_url: str, *, description: str | None = None) -> DatasetDetail:
        """Register a remote dataset; a worker fetches it."""
        return self._run(ops.fetch_dataset(name, source_url, description))

    def list_datasets(self, *, limit: int = 50, offset: int = 0) -> Page[Dataset]:
        return self._run(ops.list_datasets(limit, offset))

    def get_dataset(self, name: str) -> DatasetDetail:
        return self._run(ops.get_dataset(name))

    def download_dataset(self, name: str, dest: Path | str, *, progress: Progress | None = None) -> Path:
        return self._run(ops.download_dataset(name, Path(dest), progress))

    def delete_dataset(self, name: str) -> None:
        return self._run(ops.delete_dataset(name))

    # --- batch jobs and runs --------------------------------------------------------------------------------

    def create_job(
        self,
        name: str,
        params: dict[str, Any],
        *,
        kind: str = "batch_predict",
        dispatch: str | None = None,
        schedule: dict[str, str] | None = None,
        retries: int | None = None,
        description: str | None = None,
    ) -> BatchJob:
        """Create a batch job (`params` as the API documents them: service, input_dataset, output_dataset…)."""
        body = {
            "name": name,
            "kind": kind,
            "params": params,
            "dispatch": dispatch,
            "schedule": schedule,
            "retries": retries,
            "description": description,
        }
        return self._run(ops.create_job(body))

    def list_jobs(self, *, limit: int = 50, offset: int = 0) -> Page[BatchJob]:
        return self._run(ops.list_jobs(limit, offset))

    def get_job(self, name: str) -> BatchJob:
        return self._run(ops.get_job(name))

    def update_job(self, name: str, **changes: Any) -> BatchJob:
        return self._run(ops.update_job(name, changes))

    def delete_job(self, name: str) -> None:
        return self._run(ops.delete_job(name))

    def pause_schedule(self, name: str) -> BatchJob:
        return self._run(ops.schedule_action(name, "pause"))

    def resume_schedule(self, name: str) -> BatchJob:
        return self._run(ops.schedule_action(name, "resume"))

    def generate_script(self, input_dataset: str, output_dataset: str, service: str, **options: Any) -> str:
        """A runnable scoring script for this dataset and service."""
        body = {"input_dataset": input_dataset, "output_dataset": output_dataset, "service": service, **options}
        return self._run(ops.generate_script(body))

    def run_job(
        self, name: str, *, wait: bool = False, timeout: float = 3600, progress: RunProgress | None = None
    ) -> Run:
        """Start a run now; with `wait=True` return when it ends, calling `progress(run)` after every poll."""
        run = self._run(ops.run_job(name))
        if wait:
            run = self._run(ops.wait_run(name, run.number, timeout, progress))
        return run

    def list_runs(self, job: str, *, limit: int = 50, offset: int = 0) -> Page[Run]:
        return self._run(ops.list_runs(job, limit, offset))

    def get_run(self, job: str, run: int) -> Run:
        return self._run(ops.get_run(job, run))

    def wait_run(self, job: str, run: int, *, timeout: float = 3600, progress: RunProgress | None = None) -> Run:
        return self._run(ops.wait_run(job, run, timeout, progress))

    def pause_run(self, job: str, run: int) -> Run:
        return self._run(ops.run_action(job, run, "pause"))

    def continue_run(self, job: str, run: int) -> Run:
        return self._run(ops.run_action(job, run, "continue"))

    def stop_run(self, job: str, run: int) -> Run:
        return self._run(ops.run_action(job, run, "stop"))

    def delete_run(self, job: str, run: int) -> None:
        return self._run(ops.delete_run(job, run))

    def download_result(self, job: str, run: int, dest: Path | str, *, progress: Progress | None = None) -> Path:
        return self._run(ops.download_result(job, run, Path(dest), progress))

    # --- keys -----------------------------------------------------------------------------------------------

    def create_key(self, name: str, scopes: list[str], *, services: list[str] | None = None) -> ApiKeyCreated:
        """A new API key; its secret (`.key`) is shown this once only."""
        return self._run(ops.create_key(name, scopes, services))

    def list_keys(self, *, include_revoked: bool = False, limit: int = 50, offset: int = 0) -> Page[ApiKey]:
        return self._run(ops.list_keys(include_revoked, limit, offset))

    def get_key(self, key_id: str) -> ApiKey:
        return self._run(ops.get_key(key_id))

    def revoke_key(self, key_id: str) -> None:
        return self._run(ops.revoke_key(key_id))


class AsyncClient:
    """The same operations as `Client`, awaitable: `async with AsyncClient() as ms: await ms.predict(...)`."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        config = resolve(url, api_key)
        self.url = config.url
        self._http = httpx.AsyncClient(
            base_url=config.url, headers=_headers(config.api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, step: Call) -> httpx.Response:
        try:
            if step.stream_to is None:
                return await self._http.request(step.method, step.path, **_request_kwargs(step))
            async with self._http.stream(step.method, step.path, **_request_kwargs(step)) as response:
                if response.status_code >= 400:
                    await response.aread()
                    return checked(response, step.ok)
                writer, ok = _Writer(step, response), False
                try:
                    async for chunk in response.aiter_bytes(1 << 16):
                        writer.write(chunk)
                    ok = True
                finally:
                    writer.close(ok)
                return response
        except httpx.TransportError as exc:
            raise ConnectError(f"cannot reach {self.url}: {exc}") from exc

    async def _run(self, op: Op[T]) -> T:
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                # A failed send is thrown into the operation, so its own clean-up (open upload files) runs.
                step = op.throw(error) if error is not None else op.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            error = None
            try:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    value = None
                else:
                    value = await self._send(step)
            except Exception as exc:
                error = exc

    # --- models ---------------------------------------------------------------------------------------------

    async def upload_model(
        self,
        file: Path | str,
        name: str,
        *,
        description: str | None = None,
        function_type: str | None = None,
        progress: Progress | None = None,
    ) -> ModelVersion:
        """Upload a PMML or ONNX file as a new version of `name`; returns the version as the server described it."""
        return await self._run(ops.upload_model(file, name, description, function_type, progress))

    async def list_models(self, *, limit: int = 50, offset: int = 0) -> Page[ModelSummary]:
        return await self._run(ops.list_models(limit, offset))

    async def get_model(self, name: str) -> ModelDetail:
        return await self._run(ops.get_model(name))

    async def update_model(self, name: str, *, description: str) -> ModelDetail:
        return await self._run(ops.update_model(name, description))

    async def delete_model(self, name: str) -> None:
        return await self._run(ops.delete_model(name))

    async def list_versions(self, name: str) -> list[ModelVersion]:
        return await self._run(ops.list_versions(name))

    async def describe(self, name: str, version: str | int = "latest") -> ModelVersion:
        """A version (number, `latest` or an alias): engine, algorithm, inputs, outputs, class labels."""
        return await self._run(ops.describe(name, version))

    async def delete_version(self, name: str, version: str | int) -> None:
        return await self._run(ops.delete_version(name, version))

    async def example(self, name: str, version: str | int = "latest") -> dict[str, Any]:
        """A valid request body for this version."""
        return await self._run(ops.example(name, version))

    async def download_model(
        self, name: str, dest: Path | str, version: str | int = "latest", *, progress: Progress | None = None
    ) -> Path:
        return await self._run(ops.download_model(name, version, Path(dest), progress))

    async def set_alias(self, name: str, alias: str, version: int) -> Alias:
        return await self._run(ops.set_alias(name, alias, version))

    async def delete_alias(self, name: str, alias: str) -> None:
        return await self._run(ops.delete_alias(name, alias))

    async def test(self, name: str, records: Records | Path, version: str | int = "latest") -> Predictions:
        """Predict with a model version without deploying it (records, a DataFrame, or a CSV/JSON file Path)."""
        return await self._run(ops.test(name, records, version))

    # --- services -------------------------------------------------------------------------------------------

    async def deploy(
        self,
        model: str,
        name: str | None = None,
        *,
        version: int | None = None,
        alias: str | None = None,
        replicas: int = 1,
        cpu_reserve: float | None = None,
        memory_reserve: int | None = None,
        description: str | None = None,
        wait: bool = False,
        timeout: float = 120,
    ) -> Service:
        """Deploy a model version as a service (named like the model unless `name`); `wait=True` returns once
        every replica is ready and the gateway routes to it, so the first predict does not answer 503."""
        body = {
            "name": name or model,
            "model": model,
            "version": version,
            "alias": alias,
            "replicas": replicas,
            "cpu_reserve": cpu_reserve,
            "memory_reserve": memory_reserve,
            "description": description,
        }
        return await self._run(ops.deploy(body, wait, timeout))

    async def wait_service(self, name: str, timeout: float = 120) -> Service:
        return await self._run(ops.wait_service(name, timeout))

    async def list_services(self, *, limit: int = 50, offset: int = 0) -> Page[Service]:
        return await self._run(ops.list_services(limit, offset))

    async def get_service(self, name: str) -> Service:
        return await self._run(ops.get_service(name))

    async def update_service(
        self,
        name: str,
        *,
        version: int | None = None,
        alias: str | None = None,
        replicas: int | None = None,
        cpu_reserve: float | None = None,
        memory_reserve: int | None = None,
        description: str | None = None,
    ) -> Service:
        patch = {
            "version": version,
            "alias": alias,
            "replicas": replicas,
            "cpu_reserve": cpu_reserve,
            "memory_reserve": memory_reserve,
            "description": description,
        }
        return await self._run(ops.update_service(name, patch))

    async def scale(self, name: str, replicas: int) -> Service:
        return await self._run(ops.update_service(name, {"replicas": replicas}))

    async def pause(self, name: str) -> Service:
        return await self._run(ops.service_action(name, "pause"))

    async def start(self, name: str) -> Service:
        return await self._run(ops.service_action(name, "start"))

    async def delete_service(self, name: str) -> None:
        return await self._run(ops.delete_service(name))

    async def restart_replica(self, name: str, replica_id: str) -> Service:
        return await self._run(ops.restart_replica(name, replica_id))

    async def predict(self, service: str, records: Records | Path) -> Predictions:
        """Predict synchronously: one record (dict), a list of records, a DataFrame, or a CSV/JSON file Path."""
        return await self._run(ops.predict(service, records))

    # --- async predictions (wait return) --------------------------------------------------------------------

    async def submit(
        self, service: str, records: Records, *, callback_url: str | None = None, ttl_seconds: int | None = None
    ) -> AsyncJob:
        """Queue a prediction; returns at once with the job's id (see `result` and `wait`)."""
        return await self._run(ops.submit(service, records, callback_url, ttl_seconds))

    async def result(self, job_id: str, *, wait: float = 0) -> AsyncJob:
        """The job now, or after up to `wait` seconds (long poll, at most the server's limit)."""
        return await self._run(ops.result(job_id, wait))

    async def wait(self, job_id: str, timeout: float = 120) -> AsyncJob:
        """Until the job ends (succeeded, failed or cancelled)."""
        return await self._run(ops.wait(job_id, timeout))

    async def cancel(self, job_id: str) -> AsyncJob:
        return await self._run(ops.cancel(job_id))

    async def list_async_jobs(
        self, service: str, *, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[AsyncJob]:
        return await self._run(ops.list_async_jobs(service, status, limit, offset))

    # --- datasets -------------------------------------------------------------------------------------------

    async def upload_dataset(
        self, file: Path | str, name: str, *, description: str | None = None, progress: Progress | None = None
    ) -> DatasetDetail:
        """Upload a CSV, JSON lines or Parquet file as a dataset."""
        return await self._run(ops.upload_dataset(file, name, description, progress))

    async def fetch_dataset(self, name: str, source_url: str, *, description: str | None = None) -> DatasetDetail:
        """Register a remote dataset; a worker fetches it."""
        return await self._run(ops.fetch_dataset(name, source_url, description))

    async def list_datasets(self, *, limit: int = 50, offset: int = 0) -> Page[Dataset]:
        return await self._run(ops.list_datasets(limit, offset))

    async def get_dataset(self, name: str) -> DatasetDetail:
        return await self._run(ops.get_dataset(name))

    async def download_dataset(self, name: str, dest: Path | str, *, progress: Progress | None = None) -> Path:
        return await self._run(ops.download_dataset(name, Path(dest), progress))

    async def delete_dataset(self, name: str) -> None:
        return await self._run(ops.delete_dataset(name))

    # --- batch jobs and runs --------------------------------------------------------------------------------

    async def create_job(
        self,
        name: str,
        params: dict[str, Any],
        *,
        kind: str = "batch_predict",
        dispatch: str | None = None,
        schedule: dict[str, str] | None = None,
        retries: int | None = None,
        description: str | None = None,
    ) -> BatchJob:
        """Create a batch job (`params` as the API documents them: service, input_dataset, output_dataset…)."""
        body = {
            "name": name,
            "kind": kind,
            "params": params,
            "dispatch": dispatch,
            "schedule": schedule,
            "retries": retries,
            "description": description,
        }
        return await self._run(ops.create_job(body))

    async def list_jobs(self, *, limit: int = 50, offset: int = 0) -> Page[BatchJob]:
        return await self._run(ops.list_jobs(limit, offset))

    async def get_job(self, name: str) -> BatchJob:
        return await self._run(ops.get_job(name))

    async def update_job(self, name: str, **changes: Any) -> BatchJob:
        return await self._run(ops.update_job(name, changes))

    async def delete_job(self, name: str) -> None:
        return await self._run(ops.delete_job(name))

    async def pause_schedule(self, name: str) -> BatchJob:
        return await self._run(ops.schedule_action(name, "pause"))

    async def resume_schedule(self, name: str) -> BatchJob:
        return await self._run(ops.schedule_action(name, "resume"))

    async def generate_script(self, input_dataset: str, output_dataset: str, service: str, **options: Any) -> str:
        """A runnable scoring script for this dataset and service."""
        body = {"input_dataset": input_dataset, "output_dataset": output_dataset, "service": service, **options}
        return await self._run(ops.generate_script(body))

    async def run_job(
        self, name: str, *, wait: bool = False, timeout: float = 3600, progress: RunProgress | None = None
    ) -> Run:
        """Start a run now; with `wait=True` return when it ends, calling `progress(run)` after every poll."""
        run = await self._run(ops.run_job(name))
        if wait:
            run = await self._run(ops.wait_run(name, run.number, timeout, progress))
        return run

    async def list_runs(self, job: str, *, limit: int = 50, offset: int = 0) -> Page[Run]:
        return await self._run(ops.list_runs(job, limit, offset))

    async def get_run(self, job: str, run: int) -> Run:
        return await self._run(ops.get_run(job, run))

    async def wait_run(self, job: str, run: int, *, timeout: float = 3600, progress: RunProgress | None = None) -> Run:
        return await self._run(ops.wait_run(job, run, timeout, progress))

    async def pause_run(self, job: str, run: int) -> Run:
        return await self._run(ops.run_action(job, run, "pause"))

    async def continue_run(self, job: str, run: int) -> Run:
        return await self._run(ops.run_action(job, run, "continue"))

    async def stop_run(self, job: str, run: int) -> Run:
        return await self._run(ops.run_action(job, run, "stop"))

    async def delete_run(self, job: str, run: int) -> None:
        return await self._run(ops.delete_run(job, run))

    async def download_result(self, job: str, run: int, dest: Path | str, *, progress: Progress | None = None) -> Path:
        return await self._run(ops.download_result(job, run, Path(dest), progress))

    # --- keys -----------------------------------------------------------------------------------------------

    async def create_key(self, name: str, scopes: list[str], *, services: list[str] | None = None) -> ApiKeyCreated:
        """A new API key; its secret (`.key`) is shown this once only."""
        return await self._run(ops.create_key(name, scopes, services))

    async def list_keys(self, *, include_revoked: bool = False, limit: int = 50, offset: int = 0) -> Page[ApiKey]:
        return await self._run(ops.list_keys(include_revoked, limit, offset))

    async def get_key(self, key_id: str) -> ApiKey:
        return await self._run(ops.get_key(key_id))

    async def revoke_key(self, key_id: str) -> None:
        return await self._run(ops.revoke_key(key_id))
