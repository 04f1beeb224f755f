"""The console's pages in-process (no browser): sessions, CSRF, CSP, escaping, scopes; the metrics reader."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from gateway.console.metrics import service_figures
from gateway.console.session import COOKIE
from tests.conftest import ADMIN_KEY

HOSTILE = "<img src=x onerror=alert(1)>"


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


async def sign_in(gateway: httpx.AsyncClient, key: str) -> httpx.Response:
    page = await gateway.get("/console/sign-in")
    return await gateway.post("/console/sign-in", data={"api_key": key, "csrf": _csrf(page.text)})


async def test_pages_need_a_session_and_sign_in_sets_a_strict_cookie(gateway: httpx.AsyncClient) -> None:
    home = await gateway.get("/")
    assert home.status_code == 303 and home.headers["location"] == "/console/models"
    page = await gateway.get("/console/models")
    assert page.status_code == 303 and page.headers["location"] == "/console/sign-in?next=/console/models"
    wrong = await sign_in(gateway, "msk_wrong_" + "x" * 40)
    assert wrong.status_code == 303 and wrong.headers["location"].endswith("error=key")
    assert COOKIE not in gateway.cookies
    signed = await sign_in(gateway, ADMIN_KEY)
    assert signed.status_code == 303 and signed.headers["location"] == "/console/models"
    cookie = next(v for k, v in signed.headers.multi_items() if k == "set-cookie" and v.startswith(COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and ADMIN_KEY not in cookie
    models = await gateway.get("/console/models")
    assert models.status_code == 200 and "No model yet" in models.text and ADMIN_KEY not in models.text
    csp = models.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "<script>" not in models.text
    out = await gateway.post("/console/sign-out", data={"csrf": _csrf(models.text)})
    assert out.status_code == 303
    gateway.cookies.clear()
    gateway.cookies.set(COOKIE, cookie.split(";")[0].split("=", 1)[1])  # the old session id is dead
    assert (await gateway.get("/console/models")).status_code == 303


async def test_upload_escapes_user_strings_and_changes_need_the_csrf_token(
    gateway: httpx.AsyncClient, onnx_models: dict[str, Path]
) -> None:
    await sign_in(gateway, ADMIN_KEY)
    token = _csrf((await gateway.get("/console/models")).text)
    model = onnx_models["logistic_regression"]
    files = {"file": ("iris.onnx", model.read_bytes())}
    no_token = await gateway.post("/console/models", data={"name": "iris", "description": HOSTILE}, files=files)
    assert no_token.status_code == 403
    uploaded = await gateway.post("/console/models", data={"name": "iris", "description": HOSTILE, "csrf": token},
                                  files=files, headers={"Accept": "application/json"})  # fmt: skip
    assert uploaded.status_code == 200 and uploaded.json() == {"location": "/console/models/iris"}
    for path in ("/console/models", "/console/models/iris"):
        html = (await gateway.get(path)).text
        assert "&lt;img src=x onerror=alert(1)&gt;" in html and HOSTILE not in html
    refused = await gateway.post("/console/models", data={"name": HOSTILE, "csrf": token}, files=files)
    assert refused.status_code == 422 and HOSTILE not in refused.text and "name" in refused.text
    forged = await gateway.post("/console/models/iris/delete", data={"csrf": "forged"})
    assert forged.status_code == 403 and (await gateway.get("/console/models/iris")).status_code == 200
    deleted = await gateway.post("/console/models/iris/delete", data={"csrf": token})
    assert deleted.status_code == 303 and (await gateway.get("/console/models/iris")).status_code == 404


async def test_a_predict_key_is_refused_admin_pages(gateway: httpx.AsyncClient) -> None:
    created = await gateway.post("/api/v1/keys", json={"name": "p", "scopes": ["predict"]},
                                 headers={"Authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    assert created.status_code == 201
    assert (await sign_in(gateway, created.json()["key"])).status_code == 303
    for path in ("/console/models", "/console/datasets", "/console/jobs", "/console/services"):
        page = await gateway.get(path)
        assert page.status_code == 403 and "admin" in page.text and "Not allowed" in page.text, path


def test_service_figures_read_one_service_from_the_metrics_text() -> None:
    text = """# HELP modelserve_service_requests_total Predict requests per service, by HTTP status.
# TYPE modelserve_service_requests_total counter
modelserve_service_requests_total{service="a",status="200"} 7.0
modelserve_service_requests_total{service="a",status="422"} 2.0
modelserve_service_requests_total{service="a",status="503"} 1.0
modelserve_service_requests_total{service="b",status="200"} 100.0
# HELP modelserve_service_request_duration_seconds Predict latency per service.
# TYPE modelserve_service_request_duration_seconds histogram
modelserve_service_request_duration_seconds_bucket{le="0.005",service="a"} 4.0
modelserve_service_request_duration_seconds_bucket{le="0.01",service="a"} 9.0
modelserve_service_request_duration_seconds_bucket{le="+Inf",service="a"} 10.0
modelserve_service_request_duration_seconds_count{service="a"} 10.0
modelserve_service_request_duration_seconds_sum{service="a"} 0.05
"""
    figures = service_figures(text, "a")
    assert figures["requests"] == 10 and figures["errors"] == 3
    assert figures["buckets"] == [[0.005, 4.0], [0.01, 9.0], [None, 10.0]]
    assert service_figures(text, "nope") == {"service": "nope", "requests": 0.0, "errors": 0.0, "buckets": []}
