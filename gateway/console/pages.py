"""The web console's pages: server-rendered, each a thin layer over `/api/v1` called with the session's key.

Long module: one short handler per console page, sharing this module's page helpers.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData, UploadFile

from gateway.console.api import Api, ApiError, api_for
from gateway.console.metrics import service_figures
from gateway.console.session import COOKIE, PRE_COOKIE, ConsoleSession, same_token, sessions_of, set_cookie
from shared.settings import Settings

router = APIRouter(prefix="/console", include_in_schema=False)
root_router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))  # autoescape on for .html

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    """No (valid) session: the caller is sent to the sign-in page."""


class CsrfFailed(Exception):
    """A state-changing request without the session's CSRF token."""


def _seg(value: str) -> str:
    return quote(value, safe="")


def secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("session", getattr(request.state, "console_session", None))
    context.setdefault("nav", template.split("_")[0])
    response = templates.TemplateResponse(request, template, context, status_code=status)
    secure(response)
    return response


async def current_session(request: Request) -> ConsoleSession:
    session = await sessions_of(request).get(request.cookies.get(COOKIE))
    if session is None:
        raise SignInRequired
    request.state.console_session = session
    return session


@asynccontextmanager
async def session_api(request: Request) -> AsyncIterator[Api]:
    session = await current_session(request)
    async with api_for(request.app, session.key) as api:
        yield api


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token (field `csrf` or header `X-CSRF-Token`) matches the session's."""
    session = await current_session(request)
    settings: Settings = request.app.state.settings
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_upload_bytes + 1024 * 1024:
        raise ApiTooLarge
    form = await request.form(max_files=1, max_fields=200)
    if not same_token(session.csrf, form.get("csrf") or request.headers.get("x-csrf-token")):
        raise CsrfFailed
    return form


class ApiTooLarge(Exception):
    """A body over the upload limit, refused before it is read."""


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def done(request: Request, location: str) -> Response:
    """After a change: scripts (XHR uploads) get the next location as JSON, forms get a 303 redirect."""
    if wants_json(request):
        return secure(JSONResponse({"location": location}))
    return secure(RedirectResponse(location, status_code=303))


def install_exception_handlers(app: Any) -> None:
    async def sign_in(request: Request, exc: Exception) -> Response:
        if wants_json(request):
            return secure(JSONResponse({"detail": "Sign in first", "location": "/console/sign-in"}, status_code=401))
        target = "/console/sign-in"
        if request.method == "GET":
            target += "?next=" + quote(request.url.path, safe="/")
        return secure(RedirectResponse(target, status_code=303))

    async def csrf(request: Request, exc: Exception) -> Response:
        return render(
            request, "error.html", 403, title="Refused", detail="The form is stale: reload the page and retry."
        )

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        if exc.status == 401:  # the key was revoked since sign-in
            return await sign_in(request, exc)
        if wants_json(request):
            return secure(JSONResponse(exc.problem or {"detail": exc.detail}, status_code=exc.status))
        title = {403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Invalid input"}.get(exc.status, "Error")
        return render(request, "error.html", exc.status, title=title, detail=exc.detail, errors=exc.errors)

    async def too_large(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", 413, title="Too large", detail="The file is over the upload limit.")

    app.add_exception_handler(SignInRequired, sign_in)
    app.add_exception_handler(CsrfFailed, csrf)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(ApiTooLarge, too_large)


# --- sign in / out ---


@root_router.get("/")
async def home() -> Response:
    return secure(RedirectResponse("/console/models", status_code=303))


@router.get("")
async def console_home() -> Response:
    return secure(RedirectResponse("/console/models", status_code=303))


@router.get("/sign-in")
async def sign_in_page(request: Request, next: str = "/console/models", error: str | None = None) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(request, "sign_in.html", 401 if error else 200, csrf=token, next=_local(next), error=error,
                      session=None)  # fmt: skip
    set_cookie(response, PRE_COOKIE, token, request.app.state.settings, max_age=3600)
    return response


def _local(target: str) -> str:
    # Only a console path: never an open redirect to another site.
    return target if target.startswith("/console/") and not target.startswith("//") else "/console/models"


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    form = await request.form(max_fields=10)
    if not same_token(request.cookies.get(PRE_COOKIE), form.get("csrf")):
        return secure(RedirectResponse("/console/sign-in?error=stale", status_code=303))
    key = str(form.get("api_key") or "").strip()
    async with api_for(request.app, key) as api:
        try:
            await api.call("GET", "/api/v1/services")  # admin scope
            admin = True
        except ApiError as err:
            if err.status != 403 or not key:
                return secure(RedirectResponse("/console/sign-in?error=key", status_code=303))
            admin = False  # a valid key without the admin scope: signed in, admin pages refused
    settings: Settings = request.app.state.settings
    session_id, _ = await sessions_of(request).create(key, admin)
    response = secure(RedirectResponse(_local(str(form.get("next") or "")), status_code=303))
    set_cookie(response, COOKIE, session_id, settings, max_age=settings.console_session_seconds)
    response.delete_cookie(PRE_COOKIE, path="/")
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    await checked_form(request)
    await sessions_of(request).delete(request.cookies.get(COOKIE))
    response = secure(RedirectResponse("/console/sign-in", status_code=303))
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


# --- models ---


@router.get("/models")
async def models_page(request: Request) -> Response:
    async with session_api(request) as api:
        models = await api.all_pages("/api/v1/models")
    return render(request, "models_list.html", models=models)


@router.post("/models")
async def upload_model(request: Request) -> Response:
    form = await checked_form(request)
    fields = {k: str(form.get(k) or "") for k in ("name", "description")}
    async with session_api(request) as api:
        version = await api.json("POST", "/api/v1/models", data=fields, files=_file(form))
    return done(request, f"/console/models/{_seg(version['model'])}")


def _file(form: FormData) -> dict[str, Any]:
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        return {"file": (upload.filename, upload.file, upload.content_type)}
    return {}


@router.get("/models/{name}")
async def model_page(request: Request, name: str, version: str = "latest") -> Response:
    async with session_api(request) as api:
        model = await api.json("GET", f"/api/v1/models/{_seg(name)}")
        versions = await api.json("GET", f"/api/v1/models/{_seg(name)}/versions")
        shown = await api.json("GET", f"/api/v1/models/{_seg(name)}/versions/{_seg(version)}")
    return render(request, "models_detail.html", model=model, versions=versions, shown=shown)


@router.post("/models/{name}/delete")
async def delete_model(request: Request, name: str) -> Response:
    await checked_form(request)
    async with session_api(request) as api:
        await api.call("DELETE", f"/api/v1/models/{_seg(name)}")
    return done(request, "/console/models")


@router.post("/models/{name}/aliases")
async def set_alias(request: Request, name: str) -> Response:
    form = await checked_form(request)
    alias, version = str(form.get("alias") or ""), str(form.get("version") or "")
    async with session_api(request) as api:
        await api.call("PUT", f"/api/v1/models/{_seg(name)}/aliases/{_seg(alias)}",
                       json={"version": int(version) if version.isdigit() else version})  # fmt: skip
    return done(request, f"/console/models/{_seg(name)}")


@router.api_route("/models/{name}/test", methods=["GET", "POST"])
async def test_page(request: Request, name: str) -> Response:
    form = await checked_form(request) if request.method == "POST" else None
    version = str((form or request.query_params).get("version") or "latest")
    mode = str((form or request.query_params).get("mode") or "form")
    result = problem = None
    async with session_api(request) as api:
        described = await api.json("GET", f"/api/v1/models/{_seg(name)}/versions/{_seg(version)}")
        example = await api.json("GET", f"/api/v1/models/{_seg(name)}/versions/{_seg(version)}/example")
        example_text = orjson.dumps(example, option=orjson.OPT_INDENT_2).decode()
        sent: dict[str, Any] = {}
        if form is not None:
            path = f"/api/v1/models/{_seg(name)}/versions/{described['version']}/test"
            try:
                if mode == "file":
                    result = await api.json("POST", path, files=_file(form))
                elif mode == "json":
                    example_text = str(form.get("body") or "")
                    result = await api.json("POST", path, content=example_text.encode(),
                                            headers={"content-type": "application/json"})  # fmt: skip
                else:
                    sent = {spec["name"]: _typed(form.get(spec["name"]), spec) for spec in described["inputs"]}
                    result = await api.json("POST", path, json={"inputs": sent})
            except ApiError as err:
                if err.status == 403:
                    raise
                problem = err
    rows = _result_rows(result["predictions"]) if result else []
    return render(request, "models_test.html", model=described, mode=mode, example=example_text, sent=sent,
                  result=result, rows=rows, problem=problem,
                  raw=orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() if result else "")  # fmt: skip


_NUMERIC = {"double", "float", "integer", "int", "int64", "int32", "float32", "float64", "long", "number"}


def _typed(value: Any, spec: dict[str, Any]) -> Any:
    """A form field as the JSON value its input variable takes (numbers as numbers, blanks as missing)."""
    text = "" if value is None else str(value).strip()
    if text == "":
        return None
    if spec.get("data_type", "").lower() in _NUMERIC:
        try:
            number = float(text)
        except ValueError:
            return text  # let the model's own validation name the field
        return int(number) if number.is_integer() and "int" in spec["data_type"].lower() else number
    return text


def _result_rows(predictions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each prediction's plain fields and, for a classifier, its class probabilities for the bar chart."""
    rows = []
    for prediction in predictions:
        probabilities = prediction.get("probabilities")
        plain = {k: v for k, v in prediction.items() if k != "probabilities" and not isinstance(v, dict | list)}
        bars = []
        if isinstance(probabilities, dict):
            bars = [(str(label), float(p)) for label, p in probabilities.items() if isinstance(p, int | float)]
        rows.append({"fields": plain, "bars": bars})
    return rows


# --- services ---


@router.get("/services")
async def services_page(request: Request) -> Response:
    async with session_api(request) as api:
        services = await api.all_pages("/api/v1/services")
        models = await api.all_pages("/api/v1/models")
    return render(request, "services_list.html", services=services, models=models,
                  chosen=request.query_params.get("model", ""))  # fmt: skip


@router.post("/services")
async def deploy(request: Request) -> Response:
    form = await checked_form(request)
    body: dict[str, Any] = {"name": form.get("name"), "model": form.get("model"), "replicas": form.get("replicas") or 1}
    target = str(form.get("version") or "").strip()
    if target.isdigit():
        body["version"] = int(target)
    elif target and target != "latest":
        body["alias"] = target
    for field in ("cpu_reserve", "memory_reserve"):
        if str(form.get(field) or "").strip():
            body[field] = form.get(field)
    async with session_api(request) as api:
        created = await api.json("POST", "/api/v1/services", json=body)
    return done(request, f"/console/services/{_seg(created['name'])}")


@router.get("/services/{name}")
async def service_page(request: Request, name: str) -> Response:
    async with session_api(request) as api:
        service = await api.json("GET", f"/api/v1/services/{_seg(name)}")
        example: Any = {"inputs": {}}
        with contextlib.suppress(ApiError):  # a predict-only key may read the service but not the model
            version = service["version"] or "latest"
            example = await api.json("GET", f"/api/v1/models/{_seg(service['model'])}/versions/{version}/example")
    base = str(request.base_url).rstrip("/")
    return render(request, "services_detail.html", service=service, rest_url=base + service["rest_url"],
                  v2_url=base + service["v2_url"], example=orjson.dumps(example).decode())  # fmt: skip


@router.post("/services/{name}/{action}")
async def service_action(request: Request, name: str, action: str) -> Response:
    form = await checked_form(request)
    path = f"/api/v1/services/{_seg(name)}"
    async with session_api(request) as api:
        if action == "delete":
            await api.call("DELETE", path)
            return done(request, "/console/services")
        if action == "scale":
            await api.call("PATCH", path, json={"replicas": form.get("replicas")})
        elif action in ("pause", "start"):
            await api.call("POST", f"{path}/{action}")
        else:
            return render(request, "error.html", 404, title="Not found", detail=f"No action '{action}'")
    return done(request, f"/console/services/{_seg(name)}")


@router.post("/services/{name}/replicas/{replica}/restart")
async def restart_replica(request: Request, name: str, replica: str) -> Response:
    await checked_form(request)
    async with session_api(request) as api:
        await api.call("POST", f"/api/v1/services/{_seg(name)}/replicas/{_seg(replica)}/restart")
    return done(request, f"/console/services/{_seg(name)}")


@router.get("/services/{name}/live.json")
async def service_live(request: Request, name: str) -> Response:
    """The service's replicas and cumulative metrics: what the page's script polls."""
    async with session_api(request) as api:
        service = await api.json("GET", f"/api/v1/services/{_seg(name)}")
        # /metrics is the platform's own (open) endpoint: the same figures Prometheus scrapes.
        metrics = (await api.call("GET", "/metrics")).text
    figures = service_figures(metrics, name)
    figures["status"] = service["status"]
    figures["replicas"] = service["replica_list"]
    return secure(JSONResponse(figures))


# --- datasets ---


@router.get("/datasets")
async def datasets_page(request: Request) -> Response:
    async with session_api(request) as api:
        datasets = await api.all_pages("/api/v1/datasets")
    return render(request, "datasets_list.html", datasets=datasets)


@router.post("/datasets")
async def add_dataset(request: Request) -> Response:
    form = await checked_form(request)
    name, description = str(form.get("name") or ""), str(form.get("description") or "")
    async with session_api(request) as api:
        if str(form.get("source") or "") == "remote":
            body = {"name": name, "source_url": str(form.get("source_url") or ""), "description": description}
            created = await api.json("POST", "/api/v1/datasets", json=body)
        else:
            created = await api.json("POST", "/api/v1/datasets", data={"name": name, "description": description},
                                     files=_file(form))  # fmt: skip
    return done(request, f"/console/datasets/{_seg(created['name'])}")


@router.get("/datasets/{name}")
async def dataset_page(request: Request, name: str) -> Response:
    async with session_api(request) as api:
        dataset = await api.json("GET", f"/api/v1/datasets/{_seg(name)}")
    return render(request, "datasets_detail.html", dataset=dataset)


@router.get("/datasets/{name}/download")
async def dataset_download(request: Request, name: str) -> Response:
    async with session_api(request) as api:
        answer = await api.call("GET", f"/api/v1/datasets/{_seg(name)}/download")
    return _attachment(answer.content, answer.headers, name)


def _attachment(content: bytes, headers: Any, name: str) -> Response:
    disposition = headers.get("content-disposition") or f'attachment; filename="{_seg(name)}"'
    return secure(Response(content, media_type=headers.get("content-type"),
                           headers={"Content-Disposition": disposition}))  # fmt: skip


@router.post("/datasets/{name}/delete")
async def delete_dataset(request: Request, name: str) -> Response:
    await checked_form(request)
    async with session_api(request) as api:
        await api.call("DELETE", f"/api/v1/datasets/{_seg(name)}")
    return done(request, "/console/datasets")


# --- jobs and runs ---


@router.get("/jobs")
async def jobs_page(request: Request) -> Response:
    async with session_api(request) as api:
        jobs = await api.all_pages("/api/v1/batch-jobs")
        datasets = await api.all_pages("/api/v1/datasets")
        services = await api.all_pages("/api/v1/services")
    return render(request, "jobs_list.html", jobs=jobs, datasets=datasets, services=services)


@router.post("/jobs")
async def create_job(request: Request) -> Response:
    form = await checked_form(request)
    scorer = str(form.get("scorer") or "")
    params: dict[str, Any] = {"input_dataset": form.get("input_dataset"), "output_dataset": form.get("output_dataset"),
                              "output_format": form.get("output_format") or "csv"}  # fmt: skip
    if scorer.startswith("model:"):
        params["model"], _, params["version"] = scorer.removeprefix("model:").rpartition(":")
    else:
        params["service"] = scorer.removeprefix("service:")
    if str(form.get("chunk_size") or "").strip():
        params["chunk_size"] = form.get("chunk_size")
    mapping = str(form.get("input_mapping") or "").strip()
    if mapping:
        try:
            params["input_mapping"] = orjson.loads(mapping)
        except orjson.JSONDecodeError:
            return render(request, "error.html", 422, title="Invalid input",
                          detail="The column mapping must be JSON, e.g. {\"X\": [\"a\", \"b\"]}")  # fmt: skip
    body: dict[str, Any] = {"name": form.get("name"), "kind": "batch_predict", "params": params,
                            "description": str(form.get("description") or ""),
                            "retries": form.get("retries") or 0}  # fmt: skip
    if form.get("dispatch") == "schedule":
        body["dispatch"] = "schedule"
        body["schedule"] = {"cron": form.get("cron"), "timezone": form.get("timezone") or "UTC"}
    async with session_api(request) as api:
        job = await api.json("POST", "/api/v1/batch-jobs", json=body)
    return done(request, f"/console/jobs/{_seg(job['name'])}")


@router.post("/jobs/script")
async def generate_script(request: Request) -> Response:
    form = await checked_form(request)
    body = {"input_dataset": form.get("input_dataset"), "output_dataset": form.get("output_dataset"),
            "service": form.get("service"), "base_url": str(request.base_url).rstrip("/")}  # fmt: skip
    async with session_api(request) as api:
        generated = await api.json("POST", "/api/v1/batch-jobs/generate-script", json=body)
    return render(request, "jobs_script.html", code=generated["code"], request_body=body)


@router.get("/jobs/{name}")
async def job_page(request: Request, name: str) -> Response:
    async with session_api(request) as api:
        job = await api.json("GET", f"/api/v1/batch-jobs/{_seg(name)}")
        runs = await api.all_pages(f"/api/v1/batch-jobs/{_seg(name)}/runs")
    return render(request, "jobs_detail.html", job=job, runs=runs)


@router.post("/jobs/{name}/{action}")
async def job_action(request: Request, name: str, action: str) -> Response:
    await checked_form(request)
    path = f"/api/v1/batch-jobs/{_seg(name)}"
    calls: dict[str, Callable[[Api], Awaitable[Any]]] = {
        "run": lambda api: api.json("POST", f"{path}/runs"),
        "delete": lambda api: api.call("DELETE", path),
        "pause-schedule": lambda api: api.call("POST", f"{path}/schedule/pause"),
        "resume-schedule": lambda api: api.call("POST", f"{path}/schedule/resume"),
    }
    if action not in calls:
        return render(request, "error.html", 404, title="Not found", detail=f"No action '{action}'")
    async with session_api(request) as api:
        answer = await calls[action](api)
    if action == "run":
        return done(request, f"/console/jobs/{_seg(name)}/runs/{answer['number']}")
    return done(request, "/console/jobs" if action == "delete" else f"/console/jobs/{_seg(name)}")


@router.get("/jobs/{name}/runs/{number}")
async def run_page(request: Request, name: str, number: int) -> Response:
    async with session_api(request) as api:
        run = await api.json("GET", f"/api/v1/batch-jobs/{_seg(name)}/runs/{number}")
    return render(request, "jobs_run.html", run=run, job_name=name)


@router.get("/jobs/{name}/runs/{number}/live.json")
async def run_live(request: Request, name: str, number: int) -> Response:
    async with session_api(request) as api:
        run = await api.json("GET", f"/api/v1/batch-jobs/{_seg(name)}/runs/{number}")
    return secure(JSONResponse(run))


@router.get("/jobs/{name}/runs/{number}/result")
async def run_result(request: Request, name: str, number: int) -> Response:
    async with session_api(request) as api:
        answer = await api.call("GET", f"/api/v1/batch-jobs/{_seg(name)}/runs/{number}/result")
    return _attachment(answer.content, answer.headers, f"{name}-{number}.csv")


@router.post("/jobs/{name}/runs/{number}/{action}")
async def run_action(request: Request, name: str, number: int, action: str) -> Response:
    await checked_form(request)
    path = f"/api/v1/batch-jobs/{_seg(name)}/runs/{number}"
    if action not in ("stop", "pause", "continue", "delete"):
        return render(request, "error.html", 404, title="Not found", detail=f"No action '{action}'")
    async with session_api(request) as api:
        if action == "delete":
            await api.call("DELETE", path)
            return done(request, f"/console/jobs/{_seg(name)}")
        await api.call("POST", f"{path}/{action}")
    return done(request, f"/console/jobs/{_seg(name)}/runs/{number}")
