"""The seed's console back end (`003_*.txt`) under `/daas`: 16 paths, each answering `{"data": {...}}`.

Long module: the seed's paths, each a few lines of field renaming over one `/api/v1` call; split, one contract
would be scattered over files.

Every handler only renames fields and calls the public `/api/v1` in-process with the caller's key
(`gateway/console/api.py`), so keys, scopes, validation and problem+json errors are exactly `/api/v1`'s.
Field names are the seed's, spelling included (`descript`, `updataTime`), because a front end written
against that contract reads them. docs/console-api.md has an example per path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from gateway.console.api import Api, ApiError, api_for
from shared.auth import bearer_token
from shared.errors import ModelServeError, NotFound, ValidationFailed, field_error

router = APIRouter(prefix="/daas", tags=["console API (seed)"])

RUN_STATUS = {
    "queued": "running",
    "running": "running",
    "paused": "paused",
    "succeeded": "success",
    "failed": "failed",
    "stopped": "failed",
}
"""The platform's run states in the seed's vocabulary {"success", "failed", "paused", "running"}."""
RUN_OPERATIONS = {"stop": "stop", "pause": "pause", "continue": "continue"}
DISPATCH_IN = {"demand": "on_demand", "on_demand": "on_demand", "schedule": "schedule"}
DISPATCH_OUT = {"on_demand": "demand", "schedule": "schedule"}


def data(payload: dict[str, Any]) -> dict[str, Any]:
    return {"data": payload}


@asynccontextmanager
async def _api(request: Request) -> AsyncIterator[Api]:
    """The public API with the caller's key; its errors become this path's problem+json unchanged."""
    key = bearer_token(request.headers.get("authorization"))
    try:
        async with api_for(request.app, key) as api:
            yield api
    except ApiError as err:
        raise ModelServeError.from_problem(err.problem, err.status) from err


async def _params(request: Request) -> dict[str, Any]:
    """A JSON object, a form, or the query string: seed front ends send all three (axios GET with params)."""
    params: dict[str, Any] = dict(request.query_params)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = await request.json()
        except ValueError as exc:
            raise ValidationFailed("Invalid JSON", errors=[field_error("body", f"not valid JSON: {exc}")]) from exc
        if not isinstance(body, dict):
            raise ValidationFailed("Expected a JSON object", errors=[field_error("body", "expected an object")])
        params.update(body)
    elif kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        params.update((await request.form()).items())
    return params


def _required(params: dict[str, Any], *names: str) -> list[str]:
    missing = [n for n in names if params.get(n) in (None, "")]
    if missing:
        errors = [field_error(n, "required") for n in missing]
        raise ValidationFailed("Missing: " + ", ".join(missing), errors=errors)
    return [str(params[n]).strip() for n in names]


def _one_of(params: dict[str, Any], name: str, allowed: list[str]) -> str:
    value = str(params.get(name) or "").strip()
    if value not in allowed:
        raise ValidationFailed(
            f"'{name}' must be one of {allowed}",
            errors=[field_error(name, "unknown value", expected=allowed, received=value[:100])],
        )
    return value


def _seg(value: str) -> str:
    return quote(value, safe="")


def public_url(request: Request, path: str) -> str:
    """An absolute URL on the gateway as the caller reached it (Host header and scheme)."""
    return str(request.base_url).rstrip("/") + path


# --- models ---


@router.post("/model-upload", summary="Upload a model file (form: file, name, type, descript)")
async def model_upload(request: Request) -> dict[str, Any]:
    form = await request.form()
    upload = form.get("file")
    name = str(form.get("name") or "").strip()
    kind = str(form.get("type") or "").strip().lower()
    errors = []
    if not isinstance(upload, UploadFile):
        errors.append(field_error("file", "required: the model file as a multipart file part"))
    if not name:
        errors.append(field_error("name", "required"))
    if kind and kind not in ("pmml", "onnx"):
        errors.append(field_error("type", "unknown model type", expected=["pmml", "onnx"], received=kind[:50]))
    if errors:
        raise ValidationFailed("Invalid upload: " + ", ".join(e["field"] for e in errors), errors=errors)
    assert isinstance(upload, UploadFile)
    fields = {"name": name, "description": str(form.get("descript") or form.get("description") or "")}
    async with _api(request) as api:
        version = await api.json("POST", "/api/v1/models", data=fields, files={"file": (upload.filename, upload.file)})
    if kind and version["format"] != kind:
        # The file is what it is: say so rather than store a wrong type.
        version["warning"] = f"the file is {version['format']}, not {kind}"
    return data({
        "modelName": version["model"],
        "modelType": version["format"],
        "descript": version["description"],
        "updataTime": version["created_at"],
        "operation": "upload",
        "status": True,
        "version": version["version"],
    })  # fmt: skip


@router.get("/model-info", summary="List the models")
async def model_info(request: Request) -> dict[str, Any]:
    async with _api(request) as api:
        models = await api.all_pages("/api/v1/models")
    return data({"modelList": [_model_item(m) for m in models]})


def _model_item(model: dict[str, Any]) -> dict[str, Any]:
    engine = model.get("engine") or {}
    return {
        "name": model["name"],
        "type": model["format"],
        "createTime": model["created_at"],
        "updateTime": model["updated_at"],
        "descript": model["description"],
        "engine": engine.get("name"),
        "latestVersion": model["latest_version"],
    }


@router.post("/operate-model", summary="Operate on a model: delete")
async def operate_model(request: Request) -> dict[str, Any]:
    params = await _params(request)
    (name,) = _required(params, "modelName")
    _one_of(params, "operation", ["delete"])
    async with _api(request) as api:
        await api.call("DELETE", f"/api/v1/models/{_seg(name)}")
    return data({"status": True})


@router.api_route("/model-descript", methods=["GET", "POST"], summary="Describe a model")
async def model_descript(request: Request) -> dict[str, Any]:
    (name,) = _required(await _params(request), "modelName")
    async with _api(request) as api:
        model = await api.json("GET", f"/api/v1/models/{_seg(name)}")
    engine = model.get("engine") or {}
    return data({
        "modelName": model["name"],
        "modelType": model["format"],
        "modelEngine": engine.get("name"),
        "descript": model["description"],
        "algorithm": model["algorithm"],
        "functionType": model["function_type"],
        "versions": model["versions"],
        "aliases": model["aliases"],
    })  # fmt: skip


@router.api_route("/model-variable", methods=["GET", "POST"], summary="A model version's input and target variables")
async def model_variable(request: Request) -> dict[str, Any]:
    params = await _params(request)
    (name,) = _required(params, "modelName")
    version = str(params.get("version") or "latest")
    async with _api(request) as api:
        described = await api.json("GET", f"/api/v1/models/{_seg(name)}/versions/{_seg(version)}")
    return data({
        "inputVariables": described["inputs"],
        "targetVariables": described["targets"],
        "outputVariables": described["outputs"],
        "version": described["version"],
    })  # fmt: skip


@router.post("/model-test", summary="Test a model with JSON data")
async def model_test(request: Request) -> dict[str, Any]:
    params = await _params(request)
    (name,) = _required(params, "modelName")
    body = params.get("data")
    if isinstance(body, list) or (isinstance(body, dict) and not {"inputs", "columns", "data"} & body.keys()):
        body = {"inputs": body}  # one record, or a list of records, given bare
    if not isinstance(body, dict):
        raise ValidationFailed("'data' must be a JSON object", errors=[field_error("data", "expected an object")])
    version = str(params.get("version") or "latest")
    async with _api(request) as api:
        if params.get("type"):
            described = await api.json("GET", f"/api/v1/models/{_seg(name)}/versions/{_seg(version)}")
            if described["format"] != str(params["type"]).lower():
                raise ValidationFailed(
                    f"Model '{name}' is {described['format']}",
                    errors=[field_error("type", "does not match the model", expected=described["format"])],
                )
        result = await api.json("POST", f"/api/v1/models/{_seg(name)}/versions/{_seg(version)}/test", json=body)
    return data({
        "modelName": result["model"],
        "version": result["version"],
        "predictions": result["predictions"],
        "warnings": result.get("warnings", []),
        "timing": result.get("timing"),
    })  # fmt: skip


# --- services ---


@router.get("/model-deploy-service", summary="The REST URL prefix a new service gets")
async def deploy_service_url(request: Request) -> dict[str, Any]:
    service = request.query_params.get("serviceName")
    base = public_url(request, "/api/v1/services/")
    return data({
        "restfulUrl": base + (f"{_seg(service)}/predict" if service else ""),
        "restfulUrlTemplate": base + "{serviceName}/predict",
        "v2UrlTemplate": public_url(request, "/v2/models/{serviceName}/infer"),
    })  # fmt: skip


@router.post("/model-deploy-service", summary="Deploy a model as a service")
async def deploy_service(request: Request) -> dict[str, Any]:
    params = await _params(request)
    model, service = _required(params, "modelName", "serviceName")
    body: dict[str, Any] = {"name": service, "model": model, "replicas": params.get("replicas") or 1}
    version = params.get("serverVersion")
    if version not in (None, "", "latest"):
        if str(version).isdigit():
            body["version"] = int(version)
        else:
            body["alias"] = str(version)
    for seed_name, api_name in (("cpuReserve", "cpu_reserve"), ("memoryReserve", "memory_reserve")):
        if params.get(seed_name) not in (None, ""):
            body[api_name] = params[seed_name]
    async with _api(request) as api:
        created = await api.json("POST", "/api/v1/services", json=body)
    return data(
        {"status": True, "serviceName": created["name"], "restfulUrl": public_url(request, created["rest_url"])}
    )


@router.post("/service-info", summary="A service: URL, model version, reservations and pods")
async def service_info(request: Request) -> dict[str, Any]:
    (name,) = _required(await _params(request), "serviceName")
    async with _api(request) as api:
        service = await api.json("GET", f"/api/v1/services/{_seg(name)}")
    return data({
        "restfulUrl": public_url(request, service["rest_url"]),
        "v2Url": public_url(request, service["v2_url"]),
        "modelName": service["model"],
        "serviceVersion": service["version"],
        "alias": service["alias"],
        "status": service["status"],
        "createTime": service["created_at"],
        "cpuReserve": service["cpu_reserve"],
        "memoryReserve": service["memory_reserve"],
        "replicas": service["replicas"],
        "podList": [_pod(p) for p in service["replica_list"]],
    })  # fmt: skip


def _pod(replica: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": replica["id"],
        "status": replica["status"],
        "restarts": replica["restarts"],
        "requestsServed": replica["requests_served"],
        "memoryBytes": replica["rss_bytes"],
        "startTime": replica["started_at"],
    }


@router.post("/operate-pod", summary="Operate on a pod (replica): restart")
async def operate_pod(request: Request) -> dict[str, Any]:
    params = await _params(request)
    (pod,) = _required(params, "podName")
    _one_of(params, "operationType", ["restart"])
    async with _api(request) as api:
        services = await api.all_pages("/api/v1/services")
        owner = next((s["name"] for s in services for r in s["replica_list"] if r["id"] == pod), None)
        if owner is None:
            raise NotFound(f"No pod '{pod}'")
        await api.call("POST", f"/api/v1/services/{_seg(owner)}/replicas/{_seg(pod)}/restart")
    return data({"status": True, "serviceName": owner})


@router.post("/operate-service", summary="Operate on a service: pause, start, scale, delete (beyond the seed)")
async def operate_service(request: Request) -> dict[str, Any]:
    # The seed's pages pause, start and delete services but list no path for it: this one fills the gap.
    params = await _params(request)
    (name,) = _required(params, "serviceName")
    operation = _one_of(params, "operation", ["pause", "start", "scale", "delete"])
    path = f"/api/v1/services/{_seg(name)}"
    async with _api(request) as api:
        if operation == "delete":
            await api.call("DELETE", path)
        elif operation == "scale":
            await api.call("PATCH", path, json={"replicas": params.get("replicas")})
        else:
            await api.call("POST", f"{path}/{operation}")
    return data({"status": True})


# --- datasets ---


@router.get("/dataset-info", summary="List the datasets")
async def dataset_info(request: Request) -> dict[str, Any]:
    async with _api(request) as api:
        datasets = await api.all_pages("/api/v1/datasets")
    return data({"datasetList": [_dataset_item(d) for d in datasets]})


def _dataset_item(dataset: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": dataset["name"],
        "type": dataset["format"],
        "size": dataset["size_bytes"],
        "rows": dataset["rows"],
        "source": dataset["source"],
        "sourceUrl": dataset["source_url"],
        "status": dataset["status"],
        "createTime": dataset["created_at"],
        "create_time": dataset["created_at"],  # the seed writes both spellings
    }


@router.post("/operate-dataset", summary="Operate on a dataset: delete, or download (answers the file)")
async def operate_dataset(request: Request) -> Any:
    params = await _params(request)
    (name,) = _required(params, "dataset")
    operation = _one_of(params, "operation", ["delete", "download"])
    path = f"/api/v1/datasets/{_seg(name)}"
    async with _api(request) as api:
        if operation == "delete":
            await api.call("DELETE", path)
            return data({"status": True})
        # The seed asks "how do we download?": the file itself, as the browser's download.
        answer = await api.call("GET", f"{path}/download")
    keep = ("content-type", "content-disposition", "etag")
    return Response(answer.content, headers={k: v for k, v in answer.headers.items() if k in keep})


@router.post("/add-dataset", summary="Add a dataset: a local file, or a remote URL the platform fetches")
async def add_dataset(request: Request) -> dict[str, Any]:
    params = await _params(request)
    source = _one_of(params, "dataSource", ["local", "remote"])
    upload = params.get("file")
    name = str(params.get("name") or params.get("fileName") or "").strip()
    if not name and isinstance(upload, UploadFile) and upload.filename:
        name = upload.filename
    name = PurePath(name).stem if "." in name else name  # "iris.csv" names the dataset "iris"
    async with _api(request) as api:
        if source == "local":
            if not isinstance(upload, UploadFile):
                raise ValidationFailed("A local dataset needs its file", errors=[field_error("file", "required")])
            fields = {"name": name, "description": str(params.get("description") or "")}
            created = await api.json(
                "POST", "/api/v1/datasets", data=fields, files={"file": (upload.filename, upload.file)}
            )
        else:
            (url,) = _required(params, "url")
            body = {"name": name, "source_url": url, "description": str(params.get("description") or "")}
            created = await api.json("POST", "/api/v1/datasets", json=body)
    return data({"status": True, "name": created["name"], "datasetStatus": created["status"]})


@router.post("/generate-script", summary="Generate a Python script that scores a dataset through a service")
async def generate_script(request: Request) -> dict[str, Any]:
    params = await _params(request)
    inputs, outputs, service = _required(params, "inputDataset", "outputDataset", "serviceName")
    body = {"input_dataset": inputs, "output_dataset": outputs, "service": service,
            "base_url": public_url(request, "")}  # fmt: skip
    async with _api(request) as api:
        generated = await api.json("POST", "/api/v1/batch-jobs/generate-script", json=body)
    return data({"code": generated["code"]})


# --- jobs and runs ---


@router.post("/model-deploy-job", summary="Create a batch job scoring a dataset; 'demand' also runs it now")
async def deploy_job(request: Request) -> dict[str, Any]:
    """The seed's job form maps onto a `batch_predict` job (docs/console-api.md has the table):

    fileName → input dataset, ext → output format, environment → the service (or `model:version`) that
    scores it, variables → column mapping, args.outputDataset → the output dataset (default `<job>-result`),
    dispatch demand/schedule (args.cron, args.timezone), runName → names the first run in its log.
    """
    params = await _params(request)
    input_dataset, job, environment = _required(params, "fileName", "jobName", "environment")
    dispatch = DISPATCH_IN.get(str(params.get("dispatch") or "demand"))
    if dispatch is None:
        _one_of(params, "dispatch", ["demand", "schedule"])
    args = params.get("args") or {}
    variables = params.get("variables") or None
    if not isinstance(args, dict) or (variables is not None and not isinstance(variables, dict)):
        raise ValidationFailed("'args' and 'variables' must be objects",
                               errors=[field_error("args", "expected an object")])  # fmt: skip
    job_params: dict[str, Any] = {
        "input_dataset": input_dataset,
        "output_dataset": str(args.get("outputDataset") or f"{job}-result"),
        "output_format": str(params.get("ext") or "csv").lstrip("."),
    }
    if ":" in environment:
        job_params["model"], job_params["version"] = environment.split(":", 1)
    else:
        job_params["service"] = environment
    if variables:
        job_params["input_mapping"] = variables
    if "chunkSize" in args:
        job_params["chunk_size"] = args["chunkSize"]
    body: dict[str, Any] = {
        "name": job,
        "kind": "batch_predict",
        "description": str(params.get("jobDescription") or ""),
        "dispatch": dispatch,
        "params": job_params,
        "retries": args.get("retries", 0),
    }
    if dispatch == "schedule":
        body["schedule"] = {"cron": args.get("cron"), "timezone": args.get("timezone") or "UTC"}
    async with _api(request) as api:
        await api.json("POST", "/api/v1/batch-jobs", json=body)
        run = None
        if dispatch == "on_demand":  # "立即执行": run now
            run = await api.json("POST", f"/api/v1/batch-jobs/{_seg(job)}/runs")
    return data({"status": True, "jobName": job, "runId": run["number"] if run else None,
                 "runName": run["name"] if run else None})  # fmt: skip


@router.post("/job-info", summary="A batch job and its runs")
async def job_info(request: Request) -> dict[str, Any]:
    (name,) = _required(await _params(request), "jobName")
    path = f"/api/v1/batch-jobs/{_seg(name)}"
    async with _api(request) as api:
        job = await api.json("GET", path)
        runs = await api.all_pages(f"{path}/runs")
    params = job["params"]
    return data({
        "jobName": job["name"],
        "url": public_url(request, path),
        "createTime": job["created_at"],
        "environment": params.get("service") or f"{params.get('model')}:{params.get('version')}",
        "dispatch": DISPATCH_OUT[job["dispatch"]],
        "schedule": job["schedule"],
        "nextRunTime": job["next_run_at"],
        "runList": [_run_item(r) for r in runs],
    })  # fmt: skip


def _run_item(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": run["number"],
        "name": run["name"],
        "createTime": run["created_at"],
        "duration": run["duration_seconds"],
        "status": RUN_STATUS[run["status"]],
        "state": run["status"],
        "progress": run["progress"],
    }


@router.post("/operate-run", summary="Operate on a run: stop, pause, continue, delete, result (the file)")
async def operate_run(request: Request) -> Any:
    params = await _params(request)
    operation = _one_of(params, "type", ["stop", "pause", "continue", "delete", "result"])
    job, number = _run_ref(params)
    path = f"/api/v1/batch-jobs/{_seg(job)}/runs/{number}"
    async with _api(request) as api:
        if operation == "result":
            answer = await api.call("GET", f"{path}/result")
            keep = ("content-type", "content-disposition")
            return Response(answer.content, headers={k: v for k, v in answer.headers.items() if k in keep})
        if operation == "delete":
            await api.call("DELETE", path)
        else:
            await api.call("POST", f"{path}/{RUN_OPERATIONS[operation]}")
    return data({"status": True})


def _run_ref(params: dict[str, Any]) -> tuple[str, int]:
    """A run by `runName` ("job#3", as job-info lists it) or by `jobName` (or a bare `runName`) + `runId`."""
    name = str(params.get("runName") or "").strip()
    job, _, number = name.partition("#")
    job = job or str(params.get("jobName") or "").strip()
    number = number or str(params.get("runId") or "").strip()
    if not job or not number.isdigit():
        raise ValidationFailed(
            "Name the run: runName 'job#N', or jobName/runName and runId",
            errors=[field_error("runName", "required as 'job#N'"), field_error("runId", "the run number")],
        )
    return job, int(number)
