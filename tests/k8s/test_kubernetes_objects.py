"""What the Kubernetes backend asks for, without a server: names, labels, reservations, probes, secrets."""

from __future__ import annotations

from pathlib import Path

from registry.deployment.base import ServiceSpec
from registry.deployment.kubernetes import KubernetesBackend, label_value, object_name
from shared.settings import Settings


def _settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(data_dir=tmp_path, deployment_backend="kubernetes", internal_token="t" * 32, **extra)


def test_object_names_are_dns_labels_and_distinct() -> None:
    assert object_name("iris") == "ms-iris"
    odd = [object_name(n) for n in ("Iris_v2", "iris.v2", "iris-v2", "x" * 128)]
    assert all(len(n) <= 63 and n == n.lower() and n[0].isalnum() and n[-1].isalnum() for n in odd)
    assert len(set(odd)) == len(odd)
    assert label_value("iris") == "iris" and len(label_value("a" * 100)) <= 63
    assert label_value("a b") != label_value("a-b")


def test_deployment_carries_reservations_probes_and_no_secret(tmp_path: Path) -> None:
    backend = KubernetesBackend(
        _settings(
            tmp_path,
            kubernetes_node_selector={"pool": "cpu"},
            kubernetes_tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            kubernetes_labels={"team": "risk"},
            kubernetes_service_account="replica",
        )
    )
    spec = ServiceSpec(name="iris", model="iris", version=3, replicas=2, cpu_reserve=1.5, memory_reserve=300)
    deployment = backend.deployment_for(spec).to_dict()
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert container["resources"] == {"requests": {"cpu": "1500m", "memory": "300Mi"}, "limits": {"memory": "600Mi"}}
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["tolerations"][0]["key"] == "dedicated"
    assert pod["serviceAccountName"] == "replica"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "risk" and labels["modelserve.io/version"] == "3"
    assert "t" * 32 not in str(deployment)  # the token comes from a Secret, by reference
    # The same spec gives the same object: a registry restart re-adopts instead of rolling.
    assert backend.deployment_for(spec).to_dict() == deployment
    paused = backend.deployment_for(ServiceSpec(name="iris", model="iris", version=3, replicas=2, paused=True))
    assert paused.to_dict()["spec"]["replicas"] == 0


def _pod(status: dict[str, object], *, deleting: bool = False) -> object:
    from lightkube.resources.core_v1 import Pod

    meta: dict[str, object] = {
        "name": "ms-iris-abc",
        "labels": {"modelserve.io/service": "iris", "modelserve.io/version": "2"},
        "annotations": {"modelserve.io/service-name": "iris"},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return Pod.from_dict(
        {"metadata": meta, "spec": {"nodeName": "n1", "containers": [{"name": "replica"}]}, "status": status}
    )


def test_pod_troubles_become_the_replica_and_service_reason(tmp_path: Path) -> None:
    backend = KubernetesBackend(_settings(tmp_path, kubernetes_replica_port=9000))
    backend._specs["iris"] = ServiceSpec(name="iris", model="iris", version=2, replicas=1)

    def status_of(pod: object) -> tuple[str, str | None]:
        backend._pods = {"iris": {"ms-iris-abc": pod}}  # type: ignore[dict-item]
        replica = backend.runtime("iris").replicas[0]
        return replica.status, replica.reason

    pull = _pod(
        {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "replica", "ready": False, "restartCount": 0, "image": "x", "imageID": "",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "pull access denied"}},
                }
            ],
        }
    )  # fmt: skip
    assert status_of(pull) == ("failed", "ImagePullBackOff: pull access denied")
    assert backend.runtime("iris").status == "failed"
    assert backend.runtime("iris").reason == "ImagePullBackOff: pull access denied"

    oom = _pod(
        {
            "phase": "Running",
            "podIP": "10.0.0.7",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": "replica", "ready": True, "restartCount": 3, "image": "x", "imageID": "",
                    "state": {"running": {}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                }
            ],
        }
    )  # fmt: skip
    backend._pods = {"iris": {"ms-iris-abc": oom}}  # type: ignore[dict-item]
    replica = backend.runtime("iris").replicas[0]
    assert replica.status == "ready" and replica.restarts == 3 and replica.url == "http://10.0.0.7:9000"
    assert replica.node == "n1" and replica.phase == "Running" and replica.version == 2
    assert replica.reason == "last exit: OOMKilled (code 137)"
    assert backend.runtime("iris").status == "running"

    unschedulable = _pod(
        {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: cpu"}
            ],
        }
    )
    assert status_of(unschedulable) == ("starting", "Unschedulable: 0/3 nodes: cpu")
    assert backend.runtime("iris").reason == "Unschedulable: 0/3 nodes: cpu"
    assert status_of(_pod({"phase": "Running"}, deleting=True))[0] == "stopping"
