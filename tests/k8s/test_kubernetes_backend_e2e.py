"""Services as Deployments on a real API server, driven through the public API of a running `modelserve up`."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod, Service

from registry.deployment.kubernetes import MANAGED_BY, object_name
from tests.conftest import free_port
from tests.e2e.conftest import Platform, start_platform
from tests.e2e.test_services_e2e import IRIS, Load, running, upload, wait_for
from tests.k8s.kubelet import LocalKubelet

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.k8s, pytest.mark.timeout(900)]


def _pods(kube: Client, namespace: str) -> list[Pod]:
    return [
        p
        for p in kube.list(Pod, namespace=namespace, labels={MANAGED_BY: "modelserve"})
        if p.metadata is not None and p.metadata.deletionTimestamp is None
    ]


def _replicas(admin: httpx.Client, name: str) -> list[dict[str, Any]]:
    return list(admin.get(f"/api/v1/services/{name}").json()["replica_list"])


def _gone(kube: Client, kind: Any, name: str, namespace: str) -> bool:
    try:
        kube.get(kind, name, namespace=namespace)
    except ApiError as exc:
        return exc.status.code == 404
    return False


@pytest.fixture
def k8s_platform(control_plane: Any, namespace: str, kubelet: LocalKubelet, tmp_path: Path) -> Any:
    env = {
        "MODELSERVE_DEPLOYMENT_BACKEND": "kubernetes",
        "MODELSERVE_KUBERNETES_KUBECONFIG": str(control_plane.kubeconfig),
        "MODELSERVE_KUBERNETES_NAMESPACE": namespace,
        "MODELSERVE_KUBERNETES_REPLICA_PORT": str(free_port()),
        "MODELSERVE_KUBERNETES_IMAGE": "modelserve:test",
    }
    platform = start_platform(tmp_path / "data", tmp_path / "up.log", env)
    yield platform
    if platform.process.poll() is None:
        platform.stop()


def test_a_service_is_a_deployment_whose_pods_serve(
    k8s_platform: Platform, kube: Client, namespace: str, kubelet: LocalKubelet, onnx_models: dict[str, Path]
) -> None:
    platform = k8s_platform
    admin = httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {platform.admin_key}"}, timeout=30)
    upload(admin, "iris", onnx_models["random_forest"])
    created = admin.post(
        "/api/v1/services",
        json={"name": "iris", "model": "iris", "replicas": 2, "cpu_reserve": 0.5, "memory_reserve": 256},
    )
    assert created.status_code == 201, created.text
    body = wait_for(lambda: running(admin, "iris"), timeout=120, what="2 pods ready")

    # The objects: a Deployment with the service's reservations and probes, and a Service it owns.
    deployment = kube.get(Deployment, object_name("iris"), namespace=namespace)
    assert deployment.spec is not None and deployment.spec.replicas == 2
    pod_spec = deployment.spec.template.spec
    assert pod_spec is not None
    container = pod_spec.containers[0]
    assert container.resources is not None
    assert container.resources.requests == {"cpu": "500m", "memory": "256Mi"}
    assert container.resources.limits == {"memory": "512Mi"}
    assert container.readinessProbe is not None and container.readinessProbe.httpGet is not None
    assert container.readinessProbe.httpGet.path == "/health/ready"
    assert container.livenessProbe is not None and container.livenessProbe.httpGet is not None
    assert container.livenessProbe.httpGet.path == "/health/live"
    assert container.args is not None and container.args[-2:] == ["--version", "1"]
    labels = deployment.spec.template.metadata.labels if deployment.spec.template.metadata else {}
    assert labels is not None
    assert labels["modelserve.io/service"] == "iris" and labels["modelserve.io/model"] == "iris"
    assert labels["modelserve.io/version"] == "1"
    token = next(e for e in container.env or [] if e.name == "MODELSERVE_INTERNAL_TOKEN")
    assert token.value is None and token.valueFrom is not None  # a secretKeyRef, never the secret itself
    service = kube.get(Service, object_name("iris"), namespace=namespace)
    assert service.metadata is not None and service.metadata.ownerReferences
    assert deployment.metadata is not None
    assert service.metadata.ownerReferences[0].uid == deployment.metadata.uid

    # Replicas are the pods: names, node, phase.
    pods = {p.metadata.name for p in _pods(kube, namespace) if p.metadata}
    assert {r["id"] for r in body["replica_list"]} == pods and len(pods) == 2
    assert all(
        r["node"] == "node-1" and r["phase"] == "Running" and r["status"] == "ready" for r in body["replica_list"]
    )

    key = admin.post("/api/v1/keys", json={"name": "app", "scopes": ["predict"]}).json()["key"]
    app = httpx.Client(base_url=platform.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    answer = app.post("/api/v1/services/iris/predict", json=IRIS)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] == 0

    # A pod's process dies under load: the kubelet reports it failed, the Deployment replaces it, no request fails.
    with Load(platform.url, key, "iris", threads=3) as load:
        wait_for(lambda: len(load.results) > 20, what="load flowing")
        victim = sorted(pods)[0]
        kubelet.kill_process(victim)
        wait_for(
            lambda: (
                (r := _replicas(admin, "iris"))
                and victim not in {x["id"] for x in r}
                and sum(x["status"] == "ready" for x in r) == 2
            ),
            timeout=120,
            what="a replacement pod ready",
        )
        seen = len(load.results)
        wait_for(lambda: len(load.results) > seen + 20, what="load over the replacement")
    assert load.results and not load.errors, load.errors[:3]
    assert set(load.results) == {200}

    # Restart one replica: its pod is deleted and replaced.
    target = _replicas(admin, "iris")[0]["id"]
    assert admin.post(f"/api/v1/services/iris/replicas/{target}/restart").status_code == 200
    wait_for(
        lambda: (r := _replicas(admin, "iris")) and target not in {x["id"] for x in r} and running(admin, "iris"),
        timeout=120,
        what="restarted replica",
    )
    assert admin.post("/api/v1/services/iris/replicas/nope/restart").status_code == 404

    # Scale.
    assert admin.patch("/api/v1/services/iris", json={"replicas": 3}).status_code == 200
    wait_for(lambda: (b := running(admin, "iris")) and b["ready_replicas"] == 3, timeout=120, what="3 ready")
    assert kube.get(Deployment, object_name("iris"), namespace=namespace).spec.replicas == 3  # type: ignore[union-attr]

    # Pause: scaled to zero, predicts 503 with Retry-After; start brings pods back.
    assert admin.post("/api/v1/services/iris/pause").json()["status"] == "paused"
    paused = app.post("/api/v1/services/iris/predict", json=IRIS)
    assert paused.status_code == 503 and paused.headers["retry-after"]
    wait_for(lambda: not _pods(kube, namespace), timeout=60, what="pods gone while paused")
    assert kube.get(Deployment, object_name("iris"), namespace=namespace).spec.replicas == 0  # type: ignore[union-attr]
    assert admin.post("/api/v1/services/iris/start").status_code == 200
    wait_for(lambda: running(admin, "iris"), timeout=120, what="running again")

    # Roll to a new version: the Deployment rolls its pods; predicts keep answering.
    upload(admin, "iris", onnx_models["logistic_regression"])
    with Load(platform.url, key, "iris", threads=2) as load:
        assert admin.patch("/api/v1/services/iris", json={"version": 2}).status_code == 200
        wait_for(lambda: running(admin, "iris", version=2), timeout=180, what="rolled to v2")
        wait_for(
            lambda: all(
                (p.metadata.labels or {}).get("modelserve.io/version") == "2"
                for p in _pods(kube, namespace)
                if p.metadata
            ),
            timeout=120,
            what="only v2 pods",
        )
    assert load.results and set(load.results) == {200}, load.errors[:3]
    assert app.post("/api/v1/services/iris/predict", json=IRIS).json()["version"] == 2

    # The registry dies: serving goes on, and the restarted registry re-adopts the Deployment unchanged.
    before = kube.get(Deployment, object_name("iris"), namespace=namespace)
    pod_names = {p.metadata.name for p in _pods(kube, namespace) if p.metadata}
    registry = next(p for p in _alive(platform) if "registry" in _cmdline(p))
    os.kill(registry.pid, signal.SIGKILL)
    assert app.post("/api/v1/services/iris/predict", json=IRIS).status_code == 200
    wait_for(
        lambda: any("registry" in _cmdline(p) and p.pid != registry.pid for p in _alive(platform)),
        what="registry restarted",
    )
    wait_for(lambda: running(admin, "iris", version=2), timeout=60, what="registry answering")
    time.sleep(2)
    after = kube.get(Deployment, object_name("iris"), namespace=namespace)
    assert after.metadata is not None and before.metadata is not None
    assert after.metadata.generation == before.metadata.generation
    assert {p.metadata.name for p in _pods(kube, namespace) if p.metadata} == pod_names

    # Delete: nothing of the service is left in the namespace.
    assert admin.delete("/api/v1/services/iris").status_code == 204
    wait_for(lambda: _gone(kube, Deployment, object_name("iris"), namespace), what="Deployment deleted")
    wait_for(lambda: _gone(kube, Service, object_name("iris"), namespace), what="Service deleted")
    wait_for(lambda: not _pods(kube, namespace) and not kubelet.pids(), timeout=60, what="pods and processes gone")
    admin.close()
    app.close()


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return list(process.cmdline())
    except psutil.Error:  # gone, or a zombie not reaped yet
        return []


def _alive(platform: Platform) -> list[psutil.Process]:
    try:
        return platform.children()
    except psutil.Error:
        return []
