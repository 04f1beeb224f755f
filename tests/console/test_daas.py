"""The seed's console API (`/daas`), driven the way its front end calls it, on a real `modelserve up`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Platform
from tests.fixtures.batch import MAPPING, read_output

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
FEATURES = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def wait_for(check: Callable[[], Any], timeout: float = 90, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def data(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"data"}, body
    return dict(body["data"])


@pytest.mark.timeout(600)
def test_every_seed_path_as_the_front_end_calls_it(
    console_platform: Platform, admin: httpx.Client, iris_pmml: Path, iris_onnx: Path, files: tuple[str, Path]
) -> None:
    # Models: upload (form), list, describe (GET with params as axios sends them, and POST), variables, test.
    up = data(admin.post("/daas/model-upload", data={"name": "iris", "type": "pmml", "descript": "Iris <b>LR</b>"},
                         files={"file": ("iris.pmml", iris_pmml.read_bytes())}))  # fmt: skip
    assert up["modelName"] == "iris" and up["modelType"] == "pmml" and up["descript"] == "Iris <b>LR</b>"
    assert up["status"] is True and up["operation"] == "upload" and up["updataTime"]
    onnx = data(admin.post("/daas/model-upload", data={"name": "iris-onnx", "type": "onnx"},
                           files={"file": ("iris.onnx", iris_onnx.read_bytes())}))  # fmt: skip
    assert onnx["modelType"] == "onnx"
    listed = {m["name"]: m for m in data(admin.get("/daas/model-info"))["modelList"]}
    assert listed["iris"]["type"] == "pmml" and listed["iris"]["createTime"] and listed["iris-onnx"]["type"] == "onnx"
    for described in (data(admin.get("/daas/model-descript", params={"modelName": "iris"})),
                      data(admin.post("/daas/model-descript", json={"modelName": "iris"}))):  # fmt: skip
        assert described["modelName"] == "iris" and described["modelType"] == "pmml"
        assert described["modelEngine"] and described["algorithm"] and described["descript"] == "Iris <b>LR</b>"
    variables = data(admin.post("/daas/model-variable", json={"modelName": "iris"}))
    assert [v["name"] for v in variables["inputVariables"]] == list(FEATURES)
    assert variables["targetVariables"][0]["values"]
    tested = data(admin.post("/daas/model-test", json={"modelName": "iris", "type": "pmml", "data": FEATURES}))
    assert tested["modelName"] == "iris" and len(tested["predictions"]) == 1
    wrong_type = admin.post("/daas/model-test", json={"modelName": "iris", "type": "onnx", "data": FEATURES})
    assert wrong_type.status_code == 422 and wrong_type.json()["errors"][0]["field"] == "type"

    # Services: the URL prefix, deploy, describe, restart a pod; the restfulUrl answers predictions.
    prefix = data(admin.get("/daas/model-deploy-service"))
    assert prefix["restfulUrl"] == f"{console_platform.url}/api/v1/services/"
    deployed = data(admin.post("/daas/model-deploy-service", json={
        "modelName": "iris", "serviceName": "iris-svc", "serverVersion": "1", "cpuReserve": None,
        "memoryReserve": 512, "replicas": 2}))  # fmt: skip
    assert deployed["status"] is True

    def running() -> dict[str, Any] | None:
        info = data(admin.post("/daas/service-info", json={"serviceName": "iris-svc"}))
        ready = [p for p in info["podList"] if p["status"] == "ready"]
        return info if info["status"] == "running" and len(ready) == 2 else None

    info = wait_for(running, what="two ready pods")
    assert info["restfulUrl"] == f"{console_platform.url}/api/v1/services/iris-svc/predict"
    assert info["modelName"] == "iris" and info["serviceVersion"] == 1 and info["createTime"]
    assert info["cpuReserve"] is None and info["memoryReserve"] == 512
    predicted = admin.post(info["restfulUrl"], json={"inputs": FEATURES})
    assert predicted.status_code == 200, predicted.text
    pod = info["podList"][0]
    assert data(admin.post("/daas/operate-pod", json={"podName": pod["name"], "operationType": "restart"}))["status"]
    old = (pod["name"], pod["startTime"])
    wait_for(lambda: (r := running()) and old not in {(p["name"], p["startTime"]) for p in r["podList"]},
             what="a new pod ready in place of the restarted one")  # fmt: skip
    unknown_pod = admin.post("/daas/operate-pod", json={"podName": "nope-0", "operationType": "restart"})
    assert unknown_pod.status_code == 404 and unknown_pod.headers["content-type"] == "application/problem+json"

    # Datasets: a local file (form) and a remote URL, the list, download, script generation.
    base, root = files
    csv_bytes = (root / "iris.csv").read_bytes()
    assert data(admin.post("/daas/add-dataset", data={"dataSource": "local", "fileName": "iris-in.csv"},
                           files={"file": ("iris-in.csv", csv_bytes)}))["status"] is True  # fmt: skip
    remote = data(admin.post("/daas/add-dataset", json={"dataSource": "remote", "fileName": "iris-remote",
                                                        "url": f"{base}/iris.csv"}))  # fmt: skip
    assert remote["status"] is True
    wait_for(lambda: {d["name"]: d for d in data(admin.get("/daas/dataset-info"))["datasetList"]}
             .get("iris-remote", {}).get("status") == "ready", what="the remote dataset fetched")  # fmt: skip
    datasets = {d["name"]: d for d in data(admin.get("/daas/dataset-info"))["datasetList"]}
    local = datasets["iris-in"]
    assert local["type"] == "csv" and local["size"] == len(csv_bytes) and local["source"] == "local"
    assert local["createTime"] == local["create_time"] and local["rows"] == 300
    assert datasets["iris-remote"]["source"] == "remote" and datasets["iris-remote"]["size"] == len(csv_bytes)
    downloaded = admin.post("/daas/operate-dataset", json={"dataset": "iris-remote", "operation": "download"})
    assert downloaded.status_code == 200 and downloaded.content == csv_bytes
    code = data(admin.post("/daas/generate-script", json={"inputDataset": "iris-in", "outputDataset": "iris-out",
                                                          "serviceName": "iris-svc"}))["code"]  # fmt: skip
    compile(code, "score.py", "exec")
    assert "iris-svc" in code and "MODELSERVE_API_KEY" in code

    # Jobs: create and run now (demand), its runs, pause/continue/stop, the result, delete.
    job = data(admin.post("/daas/model-deploy-job", json={
        "fileName": "iris-in", "ext": "csv", "jobName": "score", "jobDescription": "nightly scoring",
        "environment": "iris-svc", "variables": None, "args": {"outputDataset": "iris-scored"},
        "dispatch": "demand", "runName": "first"}))  # fmt: skip
    assert job["status"] is True and job["runName"] == "score#1"

    def finished() -> dict[str, Any] | None:
        runs = data(admin.post("/daas/job-info", json={"jobName": "score"}))["runList"]
        return runs[0] if runs and runs[0]["status"] in ("success", "failed") else None

    run = wait_for(finished, what="the run to finish")
    assert run["status"] == "success" and run["id"] == 1 and run["name"] == "score#1" and run["createTime"]
    assert run["duration"] is not None and run["duration"] >= 0
    info = data(admin.post("/daas/job-info", json={"jobName": "score"}))
    assert info["jobName"] == "score" and info["dispatch"] == "demand" and info["environment"] == "iris-svc"
    assert info["url"] == f"{console_platform.url}/api/v1/batch-jobs/score" and info["createTime"]
    result = admin.post("/daas/operate-run", json={"runName": "score#1", "type": "result", "dispatch": "demand",
                                                   "runId": "1"})  # fmt: skip
    assert result.status_code == 200 and len(read_output(result.content)["id"]) == 300

    # A slow run (one row per chunk) to pause, continue and stop; then delete it.
    slow = data(admin.post("/daas/model-deploy-job", json={
        "fileName": "iris-in", "ext": "csv", "jobName": "slow", "environment": "iris-onnx:1",
        "variables": MAPPING, "args": {"outputDataset": "slow-out", "chunkSize": 1},
        "dispatch": "demand"}))  # fmt: skip
    ref = {"runName": slow["runName"], "dispatch": "demand"}

    def state() -> str:
        return str(data(admin.post("/daas/job-info", json={"jobName": "slow"}))["runList"][0]["state"])

    assert data(admin.post("/daas/operate-run", json={**ref, "type": "pause"}))["status"] is True
    assert wait_for(lambda: state() == "paused", what="the run paused")
    assert data(admin.post("/daas/operate-run", json={**ref, "type": "continue"}))["status"] is True
    assert wait_for(lambda: state() in ("queued", "running", "succeeded"), what="the run continued")
    stop = admin.post("/daas/operate-run", json={**ref, "type": "stop"})
    assert stop.status_code in (200, 409), stop.text  # 409 only if it already finished
    wait_for(lambda: state() in ("stopped", "succeeded"), what="the run stopped")
    assert data(admin.post("/daas/operate-run", json={"jobName": "slow", "runId": 1, "type": "delete"}))["status"]
    assert data(admin.post("/daas/job-info", json={"jobName": "slow"}))["runList"] == []

    # Deleting: dataset, service (beyond the seed), model.
    assert data(admin.post("/daas/operate-dataset", json={"dataset": "iris-remote", "operation": "delete"}))["status"]
    assert "iris-remote" not in {d["name"] for d in data(admin.get("/daas/dataset-info"))["datasetList"]}
    assert data(admin.post("/daas/operate-service", json={"serviceName": "iris-svc", "operation": "delete"}))["status"]
    wait_for(lambda: admin.get("/api/v1/services/iris-svc").status_code == 404, what="the service gone")
    assert data(admin.post("/daas/operate-model", json={"modelName": "iris-onnx", "operation": "delete"}))["status"]
    assert "iris-onnx" not in {m["name"] for m in data(admin.get("/daas/model-info"))["modelList"]}


def test_errors_are_the_public_apis_problems(admin: httpx.Client, predict_key: str, console_platform: Platform) -> None:
    missing = admin.post("/daas/model-descript", json={})
    assert missing.status_code == 422 and missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["errors"][0]["field"] == "modelName"
    unknown = admin.post("/daas/model-descript", json={"modelName": "no-such-model"})
    assert unknown.status_code == 404 and "no-such-model" in unknown.json()["detail"]
    bad_op = admin.post("/daas/operate-model", json={"modelName": "x", "operation": "explode"})
    assert bad_op.status_code == 422 and bad_op.json()["errors"][0]["field"] == "operation"
    bad_file = admin.post("/daas/model-upload", data={"name": "junk"}, files={"file": ("junk.pmml", b"not a model")})
    assert bad_file.status_code == 422 and bad_file.json()["detail"]
    with httpx.Client(base_url=console_platform.url, timeout=30) as anonymous:
        assert anonymous.get("/daas/model-info").status_code == 401
        refused = anonymous.get("/daas/model-info", headers={"Authorization": f"Bearer {predict_key}"})
        assert refused.status_code == 403 and refused.json()["detail"]
