"""The deployment files: compose.yaml (checked by docker-compose itself), Kubernetes manifests, Prometheus, Grafana.

No container engine is needed: `docker-compose config` only resolves and validates the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"

APP_SERVICES = {"migrate", "registry", "inference", "worker", "scheduler", "gateway"}
SERVICES = APP_SERVICES | {"redis", "postgres", "prometheus"}
DEPLOYMENTS = {"gateway", "registry", "inference", "worker", "scheduler"}
SECRET_ENV = {"MODELSERVE_ADMIN_KEY", "MODELSERVE_INTERNAL_TOKEN", "MODELSERVE_DATABASE_URL", "POSTGRES_PASSWORD"}
DUMMY_SECRETS = {"MODELSERVE_ADMIN_KEY": "a" * 32, "MODELSERVE_INTERNAL_TOKEN": "t" * 32}


def _required_tool(name: str) -> str:
    """The tool's path; skip without it, except in CI, which installs it and must not pass by skipping."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not on PATH; CI must install it (Debian: apt-get install -y {name})")
        pytest.skip(f"{name} is not on PATH")
    return path


def _compose_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "MODELSERVE_", "POSTGRES_"))}
    env.update(DUMMY_SECRETS)
    env.update(overrides)
    return env


def _run_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_required_tool("docker-compose"), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _k8s_files() -> list[Path]:
    """The platform's manifests (base, datastores, the Secret template); not kustomizations, examples or testenv."""
    return sorted(
        p
        for p in KUBERNETES.rglob("*.yaml")
        if p.name != "kustomization.yaml" and not {"testenv", "examples"} & set(p.relative_to(KUBERNETES).parts)
    )


def _k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in _k8s_files():
        docs.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


# ---- compose ----


def test_docker_compose_accepts_the_file_and_lists_every_service() -> None:
    result = _run_compose("config", env=_compose_env())
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == SERVICES

    services = resolved["services"]
    assert services["registry"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["gateway"]["environment"]["MODELSERVE_ADMIN_KEY"] == DUMMY_SECRETS["MODELSERVE_ADMIN_KEY"]


def test_docker_compose_refuses_to_run_without_the_secrets() -> None:
    env = _compose_env()
    del env["MODELSERVE_ADMIN_KEY"]
    result = _run_compose("config", env=env)
    assert result.returncode != 0
    assert "MODELSERVE_ADMIN_KEY" in result.stdout + result.stderr


def test_compose_app_services_share_one_image_built_from_the_dockerfile() -> None:
    services = _raw_compose()["services"]
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        assert services[name]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    assert (ROOT / "deploy" / "Dockerfile").is_file()


def test_compose_every_service_has_a_healthcheck_and_waits_on_health() -> None:
    services = _raw_compose()["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name == "migrate":  # one-shot: waited on with service_completed_successfully instead
            assert check == {"disable": True}
            continue
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
        for dependency, spec in service.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            assert spec == {"condition": wanted}, f"{name} -> {dependency}"
    for name in {"registry", "inference", "worker", "scheduler", "gateway"}:
        assert "migrate" in services[name]["depends_on"] or "registry" in services[name]["depends_on"], name
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "modelserve", "healthcheck", "worker"]
    assert services["scheduler"]["healthcheck"]["test"] == ["CMD", "modelserve", "healthcheck", "scheduler"]


def test_compose_publishes_only_the_gateway_and_shares_the_data_volume() -> None:
    services = _raw_compose()["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"gateway"}
    assert services["gateway"]["ports"] == ["8000:8000"]
    for name in ("registry", "inference", "worker"):
        assert "modelserve-data:/data" in services[name]["volumes"], name


def test_compose_takes_secrets_from_the_environment() -> None:
    environment = _raw_compose()["x-modelserve"]["environment"]
    for key in ("MODELSERVE_ADMIN_KEY", "MODELSERVE_INTERNAL_TOKEN"):
        assert re.fullmatch(r"\$\{" + key + r":\?[^}]+\}", environment[key]), key


# ---- Kubernetes ----


def test_kubernetes_manifests_parse_and_kustomization_lists_them() -> None:
    top = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert top["resources"] == ["base", "datastores"]
    for part in ("base", "datastores"):
        listed = set(yaml.safe_load((KUBERNETES / part / "kustomization.yaml").read_text())["resources"])
        on_disk = {p.name for p in (KUBERNETES / part).glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == on_disk, part
    # The Secret is a template created with kubectl; applying it would overwrite the real one with placeholders.
    assert (KUBERNETES / "secret.example.yaml").is_file()

    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in _k8s_documents()}
    assert {("Deployment", name) for name in DEPLOYMENTS} <= kinds
    assert {("Service", name) for name in ("gateway", "registry", "inference")} <= kinds
    assert {("Job", "modelserve-migrate"), ("PersistentVolumeClaim", "modelserve-data")} <= kinds
    assert {("Namespace", "modelserve"), ("ConfigMap", "modelserve-config"), ("Secret", "modelserve-secrets")} <= kinds


def test_every_deployment_has_probes_resources_and_runs_as_non_root() -> None:
    deployments = [doc for _, doc in _k8s_documents() if doc["kind"] == "Deployment"]
    assert {doc["metadata"]["name"] for doc in deployments} == DEPLOYMENTS
    for doc in deployments:
        name = doc["metadata"]["name"]
        pod = _pod_spec(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert "readinessProbe" in container, name
            assert "livenessProbe" in container, name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            probes = (container["readinessProbe"], container["livenessProbe"])
            if "ports" in container:
                assert [p["httpGet"]["path"] for p in probes] == ["/health/ready", "/health/live"], name
            else:
                assert [p["exec"]["command"] for p in probes] == [["modelserve", "healthcheck", name]] * 2, name


def _env_entries(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] not in {"Deployment", "StatefulSet", "Job"}:
        return []
    pod = _pod_spec(doc)
    return [env for c in pod.get("initContainers", []) + pod["containers"] for env in c.get("env", [])]


def test_no_manifest_contains_a_literal_secret_value() -> None:
    for path, doc in _k8s_documents():
        where = f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Secret":
            assert "data" not in doc, where
            for key, value in doc["stringData"].items():
                assert "<REPLACE" in value, f"{where}: {key} holds a value, not a placeholder"
        if doc["kind"] == "ConfigMap":
            for key in doc["data"]:
                assert not re.search(r"KEY|TOKEN|PASSWORD|SECRET|DATABASE_URL", key), f"{where}: {key}"
        for env in _env_entries(doc):
            if env["name"] in SECRET_ENV:
                assert "value" not in env, f"{where}: {env['name']} is inline"
                assert env["valueFrom"]["secretKeyRef"]["name"] == "modelserve-secrets", where
    # Nothing resembling a credential in a URL anywhere, comments included, except placeholders and shell variables.
    for path in KUBERNETES.rglob("*.yaml"):
        for user, password in re.findall(r"://([^:/@\s]+):([^@\s]+)@", path.read_text()):
            assert password.startswith(("<REPLACE", "$")), f"{path.name}: credentials for {user}"


@pytest.mark.parametrize("target", ["", "base"])
def test_kustomize_renders_the_manifests_offline(target: str) -> None:
    kubectl = _required_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / target)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert all(doc["metadata"].get("namespace", "modelserve") == "modelserve" for doc in rendered)
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered}
    assert "Secret" not in {kind for kind, _ in kinds}
    assert ("PodDisruptionBudget", "gateway") in kinds
    datastores = {("StatefulSet", "redis"), ("StatefulSet", "postgres")}
    assert datastores <= kinds if target == "" else not datastores & kinds
    if target == "":
        for doc in rendered:
            if doc["kind"] == "StatefulSet":  # persistence: each datastore claims a volume
                assert doc["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]


def test_registry_rbac_is_what_the_kubernetes_backend_needs_in_its_namespace() -> None:
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in _k8s_documents()}
    assert not any(kind.startswith("Cluster") for kind, _ in docs)
    role = docs[("Role", "modelserve-registry")]
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {("apps", "deployments", v) for v in ("get", "list", "watch", "create", "update", "delete")}
    needed |= {("", "pods", v) for v in ("list", "watch", "delete")} | {("", "services", "create")}
    assert needed <= granted
    assert not {(g, r, v) for g, r, v in granted if v in {"*", "escalate", "bind", "impersonate"} or r == "*"}
    secret_rules = [rule for rule in role["rules"] if "secrets" in rule["resources"] and "get" in rule["verbs"]]
    assert all(rule.get("resourceNames") == ["modelserve-replica"] for rule in secret_rules)
    config = docs[("ConfigMap", "modelserve-config")]["data"]
    assert config["MODELSERVE_DEPLOYMENT_BACKEND"] == "kubernetes"
    registry = _pod_spec(docs[("Deployment", "registry")])
    assert registry["serviceAccountName"] == "modelserve-registry"


def test_the_hpa_example_targets_a_service_deployment() -> None:
    hpa = yaml.safe_load((KUBERNETES / "examples" / "service-hpa.yaml").read_text())
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ms-iris"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


# ---- Prometheus, Grafana, Dockerfile ----


def test_prometheus_config_scrapes_the_gateway() -> None:
    path = DEPLOY / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    targets = {
        target: job.get("metrics_path", "/metrics")
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets["gateway:8000"] == "/metrics"
    assert {"registry:8001", "inference:8100"} <= set(targets)
    promtool = shutil.which("promtool")
    if promtool:  # Debian's `prometheus` package ships it
        result = subprocess.run(
            [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboard_is_valid_json_with_the_platform_panels(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "modelserve-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    joined = "\n".join(exprs)
    assert "sum by (service, status) (rate(modelserve_requests_total[1m]))" in exprs
    for metric in (
        "modelserve_request_duration_seconds_bucket",
        "modelserve_queue_depth",
        "modelserve_service_replicas",
        "modelserve_model_load_seconds_bucket",
    ):
        assert metric in joined, metric
    promtool = shutil.which("promtool")
    if promtool:  # every expression must be valid PromQL: check them as recording rules
        rules = {
            "groups": [{"name": "dashboard", "rules": [{"record": f"r{i}", "expr": e} for i, e in enumerate(exprs)]}]
        }
        rules_file = tmp_path / "rules.yml"
        rules_file.write_text(yaml.safe_dump(rules))
        result = subprocess.run(
            [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_cli_as_a_non_root_user() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM python:3\.11-slim|^FROM \$\{PYTHON_IMAGE\}", text, re.MULTILINE)) >= 2
    assert re.search(r"^USER (?!root|0)\S+", text, re.MULTILINE)
    assert 'ENTRYPOINT ["modelserve"]' in text
    assert 'CMD ["gateway", "--host", "0.0.0.0"]' in text
    assert re.search(r"^HEALTHCHECK .*\n?.*urllib\.request.*/health/live", text, re.MULTILINE)
    assert "EXPOSE 8000" in text
