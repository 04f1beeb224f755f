"""Services on the running platform: deploy, predict, pause/start, restart, kill -9 under load, alias roll."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
IRIS = {"inputs": {"X": [5.1, 3.5, 1.4, 0.2]}}


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def upload(admin: httpx.Client, name: str, path: Path) -> dict[str, Any]:
    resp = admin.post("/api/v1/models", data={"name": name}, files={"file": (path.name, path.read_bytes())})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def running(admin: httpx.Client, name: str, version: int | None = None) -> dict[str, Any] | None:
    body = admin.get(f"/api/v1/services/{name}").json()
    ok = body.get("status") == "running" and (version is None or body["version"] == version)
    return body if ok else None


class Load:
    """A few client threads sending predicts until stopped; bounded in count and time, loopback only."""

    def __init__(self, url: str, key: str, service: str, threads: int = 4, max_seconds: float = 60) -> None:
        self.results: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [
            threading.Thread(target=self._run, args=(url, key, service), daemon=True) for _ in range(threads)
        ]

    def _run(self, url: str, key: str, service: str) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline and len(self.results) < 50_000:
                try:
                    resp = client.post(f"/api/v1/services/{service}/predict", json=IRIS)
                    self.results.append(resp.status_code)
                    if resp.status_code != 200:
                        self.errors.append(resp.text[:300])
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_deploy_predict_pause_start_restart_delete(
    platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path]
) -> None:
    upload(admin, "iris", onnx_models["random_forest"])
    created = admin.post("/api/v1/services", json={"name": "iris", "model": "iris", "replicas": 2, "cpu_reserve": 1})
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "starting" and created.headers["location"] == "/api/v1/services/iris"
    body = wait_for(lambda: running(admin, "iris"), what="service running")
    assert body["ready_replicas"] == 2 and len({r["pid"] for r in body["replica_list"]}) == 2
    assert all(r["rss_bytes"] > 0 for r in body["replica_list"])
    assert admin.post("/api/v1/services", json={"name": "iris", "model": "iris"}).status_code == 409
    bad = admin.post("/api/v1/services", json={"name": "Bad_Name", "model": "iris"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.name"
    missing = admin.post("/api/v1/services", json={"name": "x", "model": "nope"})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "model"

    key = admin.post("/api/v1/keys", json={"name": "app", "scopes": ["predict"], "services": ["iris"]}).json()["key"]
    with httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {key}"}) as app:
        answer = app.post("/api/v1/services/iris/predict", json=IRIS)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] == 0 and answer.json()["version"] == 1
        invalid = app.post("/api/v1/services/iris/predict", json={"inputs": {"X": "nope"}})
        assert invalid.status_code == 422 and invalid.json()["errors"][0]["field"] == "inputs[0].X"
        assert app.post("/api/v1/services/other/predict", json=IRIS).status_code == 403
        assert app.get("/api/v1/services/iris").status_code == 200
        assert app.delete("/api/v1/services/iris").status_code == 403

        assert admin.delete("/api/v1/models/iris").status_code == 409
        assert "iris" in admin.delete("/api/v1/models/iris/versions/1").json()["detail"]

        assert admin.post("/api/v1/services/iris/pause").json()["status"] == "paused"
        paused = app.post("/api/v1/services/iris/predict", json=IRIS)
        assert paused.status_code == 503 and paused.headers["retry-after"]
        assert "paused" in paused.json()["detail"]
        assert admin.post("/api/v1/services/iris/start").status_code == 200
        wait_for(lambda: running(admin, "iris"), what="service running again")
        assert app.post("/api/v1/services/iris/predict", json=IRIS).status_code == 200

    scaled = admin.patch("/api/v1/services/iris", json={"replicas": 1})
    assert scaled.json()["replicas"] == 1
    body = wait_for(lambda: (b := running(admin, "iris")) and len(b["replica_list"]) == 1 and b, what="scale down")
    replica = body["replica_list"][0]
    restarted = admin.post(f"/api/v1/services/iris/replicas/{replica['id']}/restart")
    assert restarted.status_code == 200
    after = wait_for(
        lambda: (b := running(admin, "iris")) and b["replica_list"][0]["pid"] != replica["pid"] and b,
        what="replica restarted",
    )
    assert after["replica_list"][0]["id"] != replica["id"]
    assert admin.post("/api/v1/services/iris/replicas/nope/restart").status_code == 404

    metrics = httpx.get(f"{platform.url}/metrics").text
    assert 'modelserve_service_requests_total{service="iris",status="200"}' in metrics
    assert 'modelserve_service_replicas{service="iris",state="ready"}' in metrics

    assert admin.delete("/api/v1/services/iris").status_code == 204
    assert admin.post("/api/v1/services/iris/predict", json=IRIS).status_code == 404
    assert admin.delete("/api/v1/models/iris").status_code == 204


def test_kill_9_of_a_replica_under_load_fails_no_request(
    platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path]
) -> None:
    upload(admin, "iris", onnx_models["random_forest"])
    admin.post("/api/v1/services", json={"name": "iris", "model": "iris", "replicas": 2})
    body = wait_for(lambda: running(admin, "iris"), what="service running")
    victim = body["replica_list"][0]
    with Load(platform.url, platform.admin_key, "iris") as load:
        time.sleep(1.0)
        os.kill(victim["pid"], signal.SIGKILL)
        back = wait_for(
            lambda: (b := running(admin, "iris")) and any(r["restarts"] == 1 for r in b["replica_list"]) and b,
            timeout=120,  # an outcome, not a timing target: the replica comes back (slowly on a loaded machine)
            what="replica back",
        )
        time.sleep(1.0)
    assert load.errors == [], load.errors[:5]
    assert len(load.results) > 50
    assert next(r for r in back["replica_list"] if r["id"] == victim["id"])["pid"] != victim["pid"]


def test_alias_move_rolls_replicas_without_failed_requests(
    platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path]
) -> None:
    upload(admin, "iris", onnx_models["random_forest"])
    upload(admin, "iris", onnx_models["logistic_regression"])
    admin.put("/api/v1/models/iris/aliases/production", json={"version": 1})
    created = admin.post(
        "/api/v1/services", json={"name": "prod", "model": "iris", "alias": "production", "replicas": 2}
    )
    assert created.status_code == 201, created.text
    wait_for(lambda: running(admin, "prod", 1), what="v1 running")
    assert admin.delete("/api/v1/models/iris/aliases/production").status_code == 409
    with Load(platform.url, platform.admin_key, "prod") as load:
        time.sleep(0.5)
        assert admin.put("/api/v1/models/iris/aliases/production", json={"version": 2}).status_code == 200
        body = wait_for(
            lambda: (b := running(admin, "prod", 2)) and all(r["version"] == 2 for r in b["replica_list"]) and b,
            timeout=90,
            what="rolled to v2",
        )
        time.sleep(0.5)
    assert load.errors == [], load.errors[:5]
    assert body["alias"] == "production" and len(body["replica_list"]) == 2
    answer = admin.post("/api/v1/services/prod/predict", json=IRIS).json()
    assert answer["version"] == 2


def test_a_replica_that_cannot_load_fails_its_service_only(
    platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path]
) -> None:
    good = upload(admin, "good", onnx_models["random_forest"])
    bad = upload(admin, "bad", onnx_models["linear_regression"])
    admin.post("/api/v1/services", json={"name": "good", "model": "good"})
    wait_for(lambda: running(admin, "good"), what="good running")
    # The artifact disappears from the store (a broken volume): the replica cannot load it.
    artifact = platform.data_dir / "artifacts" / bad["sha256"][:2] / bad["sha256"]
    artifact.unlink()
    admin.post("/api/v1/services", json={"name": "bad", "model": "bad"})
    failed = wait_for(
        lambda: (b := admin.get("/api/v1/services/bad").json())["status"] == "failed" and b, what="bad failed"
    )
    assert failed["reason"] and "missing" in failed["reason"]
    assert admin.post("/api/v1/services/bad/predict", json={"inputs": {"X": [1, 2, 3]}}).status_code == 503
    assert admin.post("/api/v1/services/good/predict", json=IRIS).status_code == 200
    assert good["sha256"] != bad["sha256"]


def test_open_inference_protocol_v2(platform: Platform, admin: httpx.Client, onnx_models: dict[str, Path],
                                    pmml_models: dict[str, Path]) -> None:  # fmt: skip
    upload(admin, "iris", onnx_models["random_forest"])
    upload(admin, "tree", pmml_models["random_forest"])
    admin.post("/api/v1/services", json={"name": "iris", "model": "iris"})
    admin.post("/api/v1/services", json={"name": "tree", "model": "tree"})
    wait_for(lambda: running(admin, "iris") and running(admin, "tree"), what="both running")

    assert httpx.get(f"{platform.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{platform.url}/v2").json()["name"] == "modelserve"
    assert httpx.get(f"{platform.url}/v2/models/iris").status_code == 401

    meta = admin.get("/v2/models/iris").json()
    assert meta["name"] == "iris" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"] for o in meta["outputs"]} >= {"label", "probabilities"}
    assert admin.get("/v2/models/iris/ready").json() == {"name": "iris", "ready": True}
    assert admin.get("/v2/models/iris/versions/7/ready").status_code == 404

    request = {
        "id": "req-1",
        "inputs": [
            {"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3]}
        ],
    }
    answer = admin.post("/v2/models/iris/versions/1/infer", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("iris", "1", "req-1")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["shape"] == [2] and outputs["label"]["data"] == [0, 2]
    assert outputs["probabilities"]["shape"] == [2, 3] and len(outputs["probabilities"]["data"]) == 6

    tabular = admin.get("/v2/models/tree").json()
    assert [i["name"] for i in tabular["inputs"]] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    datatypes = {i["name"]: i["datatype"] for i in tabular["inputs"]}
    assert set(datatypes.values()) <= {"FP32", "FP64"}
    fields = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    inputs = [{"name": k, "shape": [1], "datatype": datatypes[k], "data": [v]} for k, v in fields.items()]
    pmml_answer = admin.post("/v2/models/tree/infer", json={"inputs": inputs, "outputs": [{"name": "label"}]})
    assert pmml_answer.status_code == 200, pmml_answer.text
    assert [o["name"] for o in pmml_answer.json()["outputs"]] == ["label"]
    assert pmml_answer.json()["outputs"][0]["data"] in ([0], ["setosa"])

    bad = admin.post(
        "/v2/models/iris/infer", json={"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2]}]}
    )
    assert bad.status_code == 422
    assert bad.json()["error"] and bad.json()["errors"][0]["field"].startswith("inputs[0]")
