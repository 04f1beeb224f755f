"""The web console in a real headless Chromium against `modelserve up`: every flow a newcomer goes through."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Platform
from tests.fixtures.batch import iris_csv, read_output

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
FEATURES = {"sepal_length": "5.9", "sepal_width": "3.0", "petal_length": "5.1", "petal_width": "1.8"}
HOSTILE = "<img src=x onerror=alert(1)>"
PAGES = ["/console/models", "/console/models/iris", "/console/models/iris/test", "/console/services",
         "/console/services/iris-svc", "/console/datasets", "/console/datasets/iris-in", "/console/jobs",
         "/console/jobs/score", "/console/jobs/score/runs/1"]  # fmt: skip


def wait_for(check: Callable[[], Any], timeout: float = 90, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def page(browser: Any, console_platform: Platform) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=console_platform.url,
                                  accept_downloads=True)  # fmt: skip
    context.set_default_timeout(90_000)  # a loaded CI machine: the first PMML load starts a JVM
    opened = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()  # the delete confirmations

    opened.on("dialog", on_dialog)
    opened.dialogs = dialogs
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    yield opened
    context.close()
    # A CSP violation or a script error shows up in the console: the console has none.
    assert not [e for e in errors if "Content Security Policy" in e or "Error" in e], errors


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, key: str) -> None:
    page.goto("/")
    assert "/console/sign-in" in page.url
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url("**/console/models")


def upload_model(page: Any, path: Path, name: str, description: str = "") -> None:
    page.goto("/console/models")
    page.set_input_files("#model-file", str(path))
    page.fill("#model-name", name)
    page.fill("#model-description", description)
    page.click("#upload-model button[type=submit]")
    error = page.locator("#upload-model .upload-error")
    wait_for(lambda: page.url.endswith(f"/console/models/{name}") or error.is_visible(), 300, f"upload of {name}")
    assert not error.is_visible(), error.inner_text()
    page.wait_for_load_state()


def slow_uploads(page: Any, bytes_per_second: int | None) -> None:
    """Throttle the browser's uploads (DevTools network conditions) so a progress bar can be watched."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": bytes_per_second or -1})  # fmt: skip


def progress_values(page: Any, selector: str, until: Callable[[], bool], timeout: float = 300) -> list[float]:
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until():
        with contextlib.suppress(Exception):  # the page may be navigating away
            seen.append(float(page.eval_on_selector(selector, "el => el.value")))
        time.sleep(0.05)
    return seen


def reloaded_text(page: Any, selector: str) -> str:
    page.reload()
    return str(page.inner_text(selector))


def submit_test(page: Any) -> None:
    page.click("#test-form button[type=submit]")
    page.wait_for_selector("#predictions, #answer .alert")
    assert page.locator("#answer .alert").count() == 0, page.inner_text("#answer")


@pytest.mark.timeout(900)  # the whole journey, one step after another, on a real platform
def test_upload_test_deploy_datasets_jobs_and_delete_everything(
    page: Any, console_platform: Platform, admin: httpx.Client, iris_onnx: Path, iris_pmml: Path,
    files: tuple[str, Path], tmp_path: Path,
) -> None:  # fmt: skip
    page.goto("/console/models")
    assert "/console/sign-in" in page.url
    shot(page, "sign-in")
    sign_in(page, console_platform.admin_key)

    # Models: upload ONNX and PMML, read their variables.
    upload_model(page, iris_onnx, "iris-onnx", "Iris, ONNX logistic regression")
    assert page.locator("table.vars").first.inner_text().count("X") >= 1
    upload_model(page, iris_pmml, "iris", "Iris, PMML logistic regression")
    inputs = page.locator("table.vars").first.inner_text()
    assert all(name in inputs for name in FEATURES)
    assert "classification" in page.inner_text(".facts")
    shot(page, "model")
    page.goto("/console/models")
    assert page.locator("#models tbody tr").count() == 2
    shot(page, "models")

    # Test: form, JSON (pre-filled with the example), a CSV file. The pool's first PMML load starts its JVM,
    # which on a loaded machine can outlast the gateway's upstream timeout: warm it first.
    warm = {"inputs": {k: float(v) for k, v in FEATURES.items()}}

    def warmed() -> bool:
        try:
            return admin.post("/api/v1/models/iris/versions/1/test", json=warm, timeout=200).status_code == 200
        except httpx.TimeoutException:
            return False

    wait_for(warmed, timeout=400, what="the inference pool to load the PMML model")
    page.goto("/console/models/iris/test?mode=form")
    for name, value in FEATURES.items():
        page.get_by_label(name).fill(value)
    submit_test(page)
    assert page.locator("#predictions tbody tr").count() == 1
    assert page.locator("svg.bars rect").count() == 3  # three classes
    shot(page, "test-form")
    page.goto("/console/models/iris/test?mode=json")
    assert '"inputs"' in page.input_value("#body")
    submit_test(page)
    assert page.locator("#predictions tbody tr").count() == 1
    csv = tmp_path / "five.csv"
    csv.write_text("sepal_length,sepal_width,petal_length,petal_width\n" + "5.1,3.5,1.4,0.2\n" * 5)
    page.goto("/console/models/iris/test?mode=file")
    page.set_input_files("#test-file", str(csv))
    submit_test(page)
    assert page.locator("#predictions tbody tr").count() == 5
    shot(page, "test-file")

    # Deploy with 2 replicas, restart one, watch the charts after predictions.
    page.goto("/console/services?model=iris")
    page.fill("#svc-name", "iris-svc")
    page.fill("#svc-replicas", "2")
    page.click("#deploy button[type=submit]")
    page.wait_for_url("**/console/services/iris-svc")

    def ready_rows() -> int:
        page.reload()
        return int(page.locator("#replicas .status-ready").count() == 2 and page.locator("#svc-status").inner_text()
                   == "running")  # fmt: skip

    wait_for(ready_rows, timeout=300, what="two ready replicas")
    rest_url = page.inner_text("#rest-url")
    assert rest_url == f"{console_platform.url}/api/v1/services/iris-svc/predict"
    assert page.inner_text("#v2-url").endswith("/v2/models/iris-svc/infer") and rest_url in page.inner_text("#curl")
    before = {r["id"]: r["started_at"] for r in admin.get("/api/v1/services/iris-svc").json()["replica_list"]}
    first = page.locator("#replicas tbody tr").first.get_attribute("data-replica")
    page.locator("#replicas tbody tr").first.get_by_role("button", name=f"Restart {first}", exact=True).click()
    page.wait_for_url("**/console/services/iris-svc")

    def restarted() -> bool:
        service = admin.get("/api/v1/services/iris-svc").json()
        now = {r["id"]: r["started_at"] for r in service["replica_list"] if r["status"] == "ready"}
        return len(now) == 2 and now.get(first) != before[first]

    wait_for(restarted, what="the restarted replica ready again")
    page.goto("/console/services/iris-svc")
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {console_platform.admin_key}"}, timeout=30) as client:
            while not stop.is_set():
                client.post(rest_url, json={"inputs": {k: float(v) for k, v in FEATURES.items()}})
                time.sleep(0.02)

    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    try:
        wait_for(lambda: float(page.inner_text("#rate-now")) > 0, what="the request-rate chart to move")
        wait_for(lambda: "/" in page.inner_text("#latency-now"), what="latency quantiles")
        wait_for(lambda: int(page.get_attribute("#charts", "data-samples") or 0) >= 4, what="a few chart points")
    finally:
        stop.set()
        sender.join(30)
    assert float(page.inner_text("#requests-total")) > 0
    shot(page, "service")
    page.goto("/console/services")
    shot(page, "services")

    # Datasets: a file with a watched progress bar, a remote URL on loopback, preview and download.
    big = iris_csv(tmp_path / "iris-in.csv", 3000)
    page.goto("/console/datasets")
    page.set_input_files("#ds-file", str(big))
    page.fill("#ds-name", "iris-in")
    slow_uploads(page, 40_000)
    page.click("#upload-dataset button[type=submit]")
    seen = progress_values(page, "#upload-dataset progress", lambda: "/console/datasets/iris-in" in page.url)
    slow_uploads(page, None)
    page.wait_for_url("**/console/datasets/iris-in")
    assert any(0 < v < 100 for v in seen), seen
    assert page.locator("#preview tbody tr").count() > 0 and "double" in page.inner_text("#preview thead").lower()
    with page.expect_download() as download:
        page.click("#download")
    assert Path(download.value.path()).read_bytes() == big.read_bytes()
    shot(page, "dataset")
    base, _ = files
    page.goto("/console/datasets")
    page.fill("#ds-url", f"{base}/iris.csv")
    page.fill("#ds-url-name", "iris-remote")
    page.click("#fetch-dataset button[type=submit]")
    page.wait_for_url("**/console/datasets/iris-remote")
    wait_for(lambda: reloaded_text(page, "#ds-status") == "ready", what="the remote dataset")
    assert page.locator("#preview tbody tr").count() > 0
    page.goto("/console/datasets")
    assert page.locator("#datasets tbody tr").count() == 2
    shot(page, "datasets")

    # Jobs: a job scored by the service, run to success with the progress bar moving; the result; the script.
    page.goto("/console/jobs")
    page.fill("#job-name", "score")
    page.fill("#job-description", "Score the iris rows")
    page.fill("#job-scorer", "service:iris-svc")
    page.select_option("#job-input", "iris-in")
    page.fill("#job-output", "iris-scored")
    page.fill("#job-chunk", "50")
    page.click("#create-job button[type=submit]")
    page.wait_for_url("**/console/jobs/score")
    page.get_by_role("button", name="Run now", exact=True).click()
    page.wait_for_url("**/console/jobs/score/runs/1")
    seen = progress_values(page, "#run-progress", lambda: page.inner_text("#run-status") in ("succeeded", "failed"))
    assert page.inner_text("#run-status") == "succeeded", page.inner_text("#run-log")
    assert any(0 < v < 1 for v in seen) and page.eval_on_selector("#run-progress", "el => el.value") == 1, seen
    assert page.inner_text("#run-rows") == "3000"
    shot(page, "run")
    with page.expect_download() as download:
        page.click("#run-result")
    assert len(read_output(Path(download.value.path()).read_bytes())["id"]) == 3000

    # A second run, slower (one row per chunk), paused, continued and stopped from its page.
    slower = {"service": "iris-svc", "input_dataset": "iris-in", "output_dataset": "iris-scored-2", "chunk_size": 1}
    assert admin.patch("/api/v1/batch-jobs/score", json={"params": slower}).status_code == 200
    page.goto("/console/jobs/score")
    page.get_by_role("button", name="Run now", exact=True).click()
    page.wait_for_url("**/console/jobs/score/runs/2")
    page.click("#run-pause")
    wait_for(lambda: page.inner_text("#run-status") == "paused", what="the run paused")
    page.click("#run-continue")
    wait_for(lambda: page.inner_text("#run-status") in ("queued", "running"), what="the run continued")
    page.click("#run-stop")
    wait_for(lambda: page.inner_text("#run-status") == "stopped", what="the run stopped")
    page.click("#run-delete")
    page.wait_for_url("**/console/jobs/score")
    assert page.locator("#runs tbody tr").count() == 1
    assert page.inner_text("#next-fire") == "—"
    shot(page, "job")

    page.goto("/console/jobs")
    page.select_option("#sc-input", "iris-in")
    page.fill("#sc-output", "iris-by-script")
    page.select_option("#sc-service", "iris-svc")
    page.click("#script-form button[type=submit]")
    code = page.inner_text("#script")
    assert "MODELSERVE_API_KEY" in code and "iris-svc" in code
    compile(code, "score.py", "exec")
    page.get_by_role("button", name="Copy", exact=True).click()
    wait_for(lambda: page.inner_text("[data-copy]") == "Copied", what="the copy acknowledged")
    shot(page, "script")

    # A scheduled job shows when it fires next.
    page.goto("/console/jobs")
    page.fill("#job-name", "nightly")
    page.fill("#job-scorer", "model:iris:1")
    page.select_option("#job-input", "iris-in")
    page.fill("#job-output", "iris-nightly")
    page.check("input[name=dispatch][value=schedule]")
    page.fill("#job-cron", "0 3 * * *")
    page.fill("#job-tz", "Europe/Paris")
    page.click("#create-job button[type=submit]")
    page.wait_for_url("**/console/jobs/nightly")
    assert page.inner_text("#next-fire").endswith("UTC")
    page.goto("/console/jobs")
    shot(page, "jobs")

    # Pause and start the service, then delete everything from the pages.
    page.goto("/console/services/iris-svc")
    page.get_by_role("button", name="Pause", exact=True).click()
    wait_for(lambda: reloaded_text(page, "#svc-status") == "paused", what="the service paused")
    page.get_by_role("button", name="Start", exact=True).click()
    page.wait_for_url("**/console/services/iris-svc")
    for path in ["/console/jobs/nightly", "/console/jobs/score"]:
        page.goto(path)
        page.get_by_role("button", name="Delete", exact=True).click()
        page.wait_for_url("**/console/jobs")
    assert page.locator("#jobs tbody tr").inner_text().startswith("No job")
    page.goto("/console/services/iris-svc")
    page.get_by_role("button", name="Delete", exact=True).click()
    page.wait_for_url("**/console/services")
    page.goto("/console/datasets")
    while page.locator("#datasets tbody a").count():  # inputs, the remote one and the runs' results
        page.locator("#datasets tbody a").first.click()
        page.get_by_role("button", name="Delete", exact=True).click()
        page.wait_for_url("**/console/datasets")
    assert page.locator("#datasets tbody tr").inner_text().startswith("No dataset")
    page.goto("/console/models")
    for name in ["iris", "iris-onnx"]:
        page.get_by_role("button", name=f"Delete {name}", exact=True).click()
        page.wait_for_url("**/console/models")
    assert page.locator("#models tbody tr").inner_text().startswith("No model")
    assert len(page.dialogs) >= 8  # every delete asked first

    # Sign out ends the session: the pages send to sign-in again.
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url("**/console/sign-in")
    page.goto("/console/models")
    assert "/console/sign-in" in page.url


def test_hostile_strings_show_as_text_and_narrow_screens_work(
    page: Any, console_platform: Platform, iris_onnx: Path, admin: httpx.Client
) -> None:
    sign_in(page, console_platform.admin_key)
    upload_model(page, iris_onnx, "hostile", HOSTILE)
    assert HOSTILE in page.inner_text(".lead")
    page.goto("/console/models")
    assert HOSTILE in page.inner_text("#models")
    # The name itself is refused by the API; the refusal is shown as text too.
    page.set_input_files("#model-file", str(iris_onnx))
    page.fill("#model-name", HOSTILE)
    page.click("#upload-model button[type=submit]")
    page.wait_for_selector(".upload-error:not([hidden])")
    assert "name" in page.inner_text(".upload-error").lower()
    page.goto(f"/console/models/{HOSTILE}")  # an unknown (and invalid) name: its 404 page echoes it as text
    assert page.locator("img").count() == 0 and page.dialogs == []
    page.set_viewport_size({"width": 800, "height": 900})
    page.goto("/console/models")
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    page.get_by_role("link", name="Datasets").click()
    page.wait_for_url("**/console/datasets")
    shot(page, "narrow-800px")
    admin.delete("/api/v1/models/hostile")


def test_docs_render_with_bundled_swagger(page: Any) -> None:
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto("/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=60_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/daas/model-upload" in p for p in paths) and any("/api/v1/models" in p for p in paths)
    assert all(url.startswith(page.url.split("/docs")[0]) for url in requested), requested  # nothing external
    shot(page, "docs")


def test_every_page_needs_a_session_and_admin_pages_refuse_a_predict_key(
    console_platform: Platform, predict_key: str
) -> None:
    with httpx.Client(base_url=console_platform.url, timeout=30) as anonymous:
        for path in PAGES:
            resp = anonymous.get(path)
            assert resp.status_code == 303 and resp.headers["location"].startswith("/console/sign-in"), path
        refused = anonymous.post("/console/sign-in", data={"api_key": predict_key, "csrf": "forged"})
        assert refused.status_code == 303 and "error=stale" in refused.headers["location"]
    with httpx.Client(base_url=console_platform.url, timeout=30) as browser_like:
        form = browser_like.get("/console/sign-in").text
        csrf = form.split('name="csrf" value="')[1].split('"')[0]
        signed = browser_like.post("/console/sign-in", data={"api_key": predict_key, "csrf": csrf})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and predict_key not in cookie
        for path in PAGES:
            resp = browser_like.get(path)
            if path.startswith("/console/services/"):  # reading one service is a predict key's right
                assert resp.status_code in (200, 404), path
                continue
            assert resp.status_code == 403 and "lacks the &#39;admin&#39; scope" in resp.text, (path, resp.text)
            assert "script-src 'self'" in resp.headers["content-security-policy"]
        # A state-changing form without the session's CSRF token is refused.
        forged = browser_like.post("/console/models/iris/delete", data={"csrf": "nope"})
        assert forged.status_code == 403
        page = browser_like.get("/console/models").text
        token = page.split('name="csrf" value="')[1].split('"')[0]
        out = browser_like.post("/console/sign-out", data={"csrf": token})
        assert out.status_code == 303
        assert browser_like.get("/console/models").status_code == 303
