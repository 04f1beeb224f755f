"""The Kubernetes backend: each service is a Deployment (its replicas are pods) plus a Service.

Long module: one backend; its desired objects, pod watch and status translation are one contract.

Kubernetes is the distributed engine; this module only states desired objects and watches pods. `apply`
replaces the Deployment with the one the spec describes (the same spec gives the same pod template, so a
registry restart re-adopts what runs instead of rolling it); the Deployment controller does scaling and
rolling updates (surge one, never below the ready count); a pod watch keeps every service's replica list,
readiness and failure reasons, and reports changes so the gateway's routing table follows the ready pods.
Only GA APIs that both 1.20 and current clusters serve are used: apps/v1 Deployments, core/v1 Pods,
Services and Secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod, Secret, Service
from lightkube.types import CascadeType

from registry.deployment.base import ReplicaState, ReplicaStatus, ServiceRuntime, ServiceSpec, ServiceStatus
from shared.errors import NotFound
from shared.settings import Settings

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
SERVICE_LABEL = "modelserve.io/service"
MODEL_LABEL = "modelserve.io/model"
VERSION_LABEL = "modelserve.io/version"
SERVICE_ANNOTATION = "modelserve.io/service-name"
SECRET_KEY = "internal-token"
RESYNC_SECONDS = 30.0
# Waiting reasons after which a pod will not become ready on its own.
_FATAL_WAITING = {
    "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
}  # fmt: skip
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def object_name(service: str) -> str:
    """A DNS-1123 label for a service name (which may hold capitals, dots and underscores)."""
    candidate = f"ms-{service}"
    if _DNS_LABEL.match(candidate):
        return candidate
    digest = hashlib.sha256(service.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^a-z0-9-]+", "-", service.lower()).strip("-")[:50].strip("-")
    return f"ms-{cleaned}-{digest}" if cleaned else f"ms-{digest}"


def label_value(value: str) -> str:
    """A label value (63 characters of [A-Za-z0-9._-], alphanumeric at both ends)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("-._")
    if len(cleaned) > 63 or cleaned != value:
        cleaned = f"{cleaned[:54].strip('-._')}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return cleaned


class KubernetesBackend:
    """Services as Deployments + Services in one namespace; replicas are their pods."""

    def __init__(self, settings: Settings, *, client: AsyncClient | None = None) -> None:
        self.settings = settings
        self.namespace = settings.kubernetes_namespace
        self._client = client
        self._specs: dict[str, ServiceSpec] = {}
        self._pods: dict[str, dict[str, Pod]] = {}
        self._names: dict[str, str] = {}
        """Label value of a service -> the service's name."""
        self._deployment_reasons: dict[str, str | None] = {}
        self._ever_running: set[str] = set()
        self._snapshots: dict[str, tuple[object, ...]] = {}
        self._on_change: Callable[[str], None] = lambda _name: None
        self._tasks: list[asyncio.Task[None]] = []
        self._locks: dict[str, asyncio.Lock] = {}

    # --- the interface -------------------------------------------------------------------------------------

    async def start(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        if self._client is None:
            config = (
                KubeConfig.from_file(self.settings.kubernetes_kubeconfig)
                if self.settings.kubernetes_kubeconfig
                else KubeConfig.from_env()
            )
            self._client = AsyncClient(config=config, namespace=self.namespace, field_manager="modelserve")
        await self._ensure_secret()
        await self._resync()
        self._tasks = [asyncio.create_task(self._watch_pods()), asyncio.create_task(self._watch_deployments())]

    async def apply(self, spec: ServiceSpec) -> None:
        self._specs[spec.name] = spec
        self._names[label_value(spec.name)] = spec.name
        async with self._lock(spec.name):
            deployment = await self._put_deployment(spec)
            await self._put_service(spec, deployment)
        self._notify(spec.name)

    async def remove(self, name: str) -> None:
        self._specs.pop(name, None)
        async with self._lock(name):
            for kind in (Deployment, Service):
                with contextlib.suppress(NotFound):
                    await self._delete(kind, object_name(name))
        self._notify(name)

    async def restart_replica(self, name: str, replica_id: str) -> None:
        if replica_id not in self._pods.get(name, {}):
            raise NotFound(f"Service '{name}' has no replica '{replica_id}'")
        await self._delete(Pod, replica_id)  # the ReplicaSet makes a new pod

    def runtime(self, name: str) -> ServiceRuntime:
        spec = self._specs.get(name)
        pods = list(self._pods.get(name, {}).values())
        statuses = sorted((self._replica_status(p) for p in pods), key=lambda r: r.id)
        if spec is None or spec.paused:
            return ServiceRuntime(status="paused", replicas=statuses)
        serving = [r for r in statuses if r.status != "stopping"]
        ready = [r for r in serving if r.status == "ready"]
        failed = [r for r in serving if r.status == "failed"]
        current_ready = [r for r in ready if r.version == spec.version]
        reason = next((r.reason for r in serving if r.reason), None) or self._deployment_reasons.get(name)
        status: ServiceStatus
        if len(current_ready) >= spec.replicas and len(ready) == len(current_ready):
            status, reason = "running", None
        elif not ready and failed:
            status = "failed"
        elif name in self._ever_running or failed:
            status = "degraded"
        else:
            status = "starting"
        return ServiceRuntime(status=status, reason=reason, replicas=statuses)

    async def close(self) -> None:
        """Stop watching; the Deployments stay (serving does not depend on the registry running)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.close()

    # --- desired objects ------------------------------------------------------------------------------------

    def deployment_for(self, spec: ServiceSpec) -> Deployment:
        """The Deployment a spec describes (the same spec always gives the same object)."""
        s = self.settings
        labels = {
            **s.kubernetes_labels,
            MANAGED_BY: "modelserve",
            SERVICE_LABEL: label_value(spec.name),
            MODEL_LABEL: label_value(spec.model),
            VERSION_LABEL: str(spec.version),
        }
        selector = {MANAGED_BY: "modelserve", SERVICE_LABEL: label_value(spec.name)}
        port = s.kubernetes_replica_port
        threads = max(1, math.ceil(spec.cpu_reserve)) if spec.cpu_reserve else 1
        env: list[dict[str, Any]] = [
            {"name": "MODELSERVE_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "MODELSERVE_REGISTRY_URL", "value": s.kubernetes_registry_url or s.registry_url},
            {"name": "MODELSERVE_ARTIFACT_FETCH", "value": s.kubernetes_artifact_fetch},
            {"name": "MODELSERVE_ONNX_INTRA_OP_THREADS", "value": str(threads)},
            {"name": "MODELSERVE_LOG_JSON", "value": "true"},
            {
                "name": "MODELSERVE_INTERNAL_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": s.kubernetes_secret_name, "key": SECRET_KEY}},
            },
        ]
        resources: dict[str, dict[str, str]] = {}
        if spec.cpu_reserve or spec.memory_reserve:
            requests: dict[str, str] = {}
            limits: dict[str, str] = {}
            if spec.cpu_reserve:
                requests["cpu"] = f"{int(spec.cpu_reserve * 1000)}m"
            if spec.memory_reserve:
                requests["memory"] = f"{spec.memory_reserve}Mi"
                if s.kubernetes_memory_limit_factor:
                    limits["memory"] = f"{math.ceil(spec.memory_reserve * s.kubernetes_memory_limit_factor)}Mi"
            resources = {"requests": requests} | ({"limits": limits} if limits else {})
        container: dict[str, Any] = {
            "name": "replica",
            "image": s.kubernetes_image,
            "imagePullPolicy": s.kubernetes_image_pull_policy,
            "command": ["modelserve", "inference"],
            "args": [
                "--host",
                "$(MODELSERVE_POD_IP)",
                "--port",
                str(port),
                "--service",
                spec.name,
                "--model",
                spec.model,
                "--version",
                str(spec.version),
            ],
            "workingDir": "/var/lib/modelserve",
            "env": env,
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {
                "httpGet": {"path": "/health/ready", "port": port},
                "periodSeconds": 2,
                "failureThreshold": 3,
            },
            "livenessProbe": {
                "httpGet": {"path": "/health/live", "port": port},
                "initialDelaySeconds": 30,
                "periodSeconds": 10,
            },
            "resources": resources,
            "volumeMounts": [{"name": "work", "mountPath": "/var/lib/modelserve"}],
        }
        pod_spec: dict[str, Any] = {
            "containers": [container],
            "volumes": [{"name": "work", "emptyDir": {}}],
            "terminationGracePeriodSeconds": 30,
        }
        if s.kubernetes_service_account:
            pod_spec["serviceAccountName"] = s.kubernetes_service_account
        if s.kubernetes_node_selector:
            pod_spec["nodeSelector"] = dict(s.kubernetes_node_selector)
        if s.kubernetes_tolerations:
            pod_spec["tolerations"] = list(s.kubernetes_tolerations)
        return Deployment.from_dict(  # type: ignore[return-value]
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": object_name(spec.name),
                    "namespace": self.namespace,
                    "labels": labels,
                    "annotations": {SERVICE_ANNOTATION: spec.name},
                },
                "spec": {
                    "replicas": 0 if spec.paused else spec.replicas,
                    "selector": {"matchLabels": selector},
                    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                    "template": {
                        "metadata": {"labels": labels, "annotations": {SERVICE_ANNOTATION: spec.name}},
                        "spec": pod_spec,
                    },
                },
            }
        )

    async def _put_deployment(self, spec: ServiceSpec) -> Deployment:
        wanted = self.deployment_for(spec)
        for _ in range(5):
            try:
                existing = await self.client.get(Deployment, object_name(spec.name), namespace=self.namespace)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
                log.info("creating Deployment %s for service %s", object_name(spec.name), spec.name)
                return await self.client.create(wanted)
            assert wanted.metadata is not None and existing.metadata is not None
            wanted.metadata.resourceVersion = existing.metadata.resourceVersion
            # Keep what the Deployment controller annotates (its revision): dropping it counts as a change.
            wanted.metadata.annotations = {
                **(existing.metadata.annotations or {}),
                **(wanted.metadata.annotations or {}),
            }
            try:
                return await self.client.replace(wanted)
            except ApiError as exc:
                if exc.status.code != 409:  # someone else changed it meanwhile: read again
                    raise
        raise RuntimeError(f"could not update the Deployment of {spec.name}: it keeps changing")

    async def _put_service(self, spec: ServiceSpec, deployment: Deployment) -> None:
        assert deployment.metadata is not None
        owner = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployment.metadata.name,
            "uid": deployment.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        service: Service = Service.from_dict(  # type: ignore[assignment]
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": object_name(spec.name),
                    "namespace": self.namespace,
                    "labels": {MANAGED_BY: "modelserve", SERVICE_LABEL: label_value(spec.name)},
                    "annotations": {SERVICE_ANNOTATION: spec.name},
                    "ownerReferences": [owner],
                },
                "spec": {
                    "selector": {MANAGED_BY: "modelserve", SERVICE_LABEL: label_value(spec.name)},
                    "ports": [{"name": "http", "port": 80, "targetPort": self.settings.kubernetes_replica_port}],
                },
            }
        )
        try:
            await self.client.get(Service, object_name(spec.name), namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            with contextlib.suppress(ApiError):  # 409: created meanwhile
                await self.client.create(service)

    async def _ensure_secret(self) -> None:
        """The replicas' internal token, kept in a Secret the pods read (never in the pod spec)."""
        secret = Secret(
            metadata=ObjectMeta(
                name=self.settings.kubernetes_secret_name,
                namespace=self.namespace,
                labels={MANAGED_BY: "modelserve"},
            ),
            stringData={SECRET_KEY: self.settings.internal_token or ""},
        )
        try:
            await self.client.create(secret)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            await self.client.replace(secret)

    async def _delete(self, kind: Any, name: str) -> None:
        try:
            await self.client.delete(kind, name, namespace=self.namespace, cascade=CascadeType.BACKGROUND)
        except ApiError as exc:
            if exc.status.code == 404:
                raise NotFound(f"{kind.__name__} {name} does not exist") from exc
            raise

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("the Kubernetes backend is not started")
        return self._client

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # --- watching pods --------------------------------------------------------------------------------------

    async def _resync(self) -> None:
        """A full list: the cache as the API server has it (after a start, a lost watch, and periodically)."""
        fresh: dict[str, dict[str, Pod]] = {}
        async for pod in self.client.list(Pod, namespace=self.namespace, labels={MANAGED_BY: "modelserve"}):
            service = self._service_of(pod)
            if service is not None and pod.metadata is not None and pod.metadata.name:
                fresh.setdefault(service, {})[pod.metadata.name] = pod
        touched = set(self._pods) | set(fresh)
        self._pods = fresh
        for name in touched:
            self._notify(name)

    async def _watch_pods(self) -> None:
        while True:
            try:
                async for kind, pod in self.client.watch(
                    Pod, namespace=self.namespace, labels={MANAGED_BY: "modelserve"}, server_timeout=int(RESYNC_SECONDS)
                ):
                    self._on_pod(kind, pod)
                await self._resync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("pod watch lost (%s); listing again", exc)
                await asyncio.sleep(1)
                with contextlib.suppress(Exception):
                    await self._resync()

    def _on_pod(self, kind: str, pod: Pod) -> None:
        service = self._service_of(pod)
        if service is None or pod.metadata is None or not pod.metadata.name:
            return
        pods = self._pods.setdefault(service, {})
        if kind == "DELETED":
            pods.pop(pod.metadata.name, None)
        else:
            pods[pod.metadata.name] = pod
            if pod.status is not None and pod.status.phase == "Failed" and pod.metadata.deletionTimestamp is None:
                # A dead pod is not restarted in place: remove it so the ReplicaSet's replacement takes over.
                asyncio.get_running_loop().create_task(self._forget_failed(pod.metadata.name))
        self._notify(service)

    async def _forget_failed(self, pod_name: str) -> None:
        with contextlib.suppress(Exception):
            await self.client.delete(Pod, pod_name, namespace=self.namespace)

    async def _watch_deployments(self) -> None:
        """Deployment conditions (quota, progress deadline) become the service's reason."""
        while True:
            try:
                async for _kind, deployment in self.client.watch(
                    Deployment, namespace=self.namespace, labels={MANAGED_BY: "modelserve"}
                ):
                    service = self._service_of(deployment)
                    if service is None:
                        continue
                    reason = None
                    for cond in (deployment.status.conditions if deployment.status else None) or []:
                        failing = cond.status == "False" or cond.type == "ReplicaFailure"
                        if failing and cond.type in ("ReplicaFailure", "Progressing") and cond.message:
                            reason = f"{cond.reason}: {cond.message}"
                    if self._deployment_reasons.get(service) != reason:
                        self._deployment_reasons[service] = reason
                        self._notify(service)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("deployment watch lost (%s); watching again", exc)
                await asyncio.sleep(1)

    def _service_of(self, obj: Pod | Deployment) -> str | None:
        meta = obj.metadata
        if meta is None:
            return None
        name = (meta.annotations or {}).get(SERVICE_ANNOTATION)
        if name is None:
            label = (meta.labels or {}).get(SERVICE_LABEL)
            name = self._names.get(label, label) if label else None
        return name

    def _replica_status(self, pod: Pod) -> ReplicaStatus:
        meta, status = pod.metadata, pod.status
        assert meta is not None
        labels = meta.labels or {}
        state: ReplicaState = "starting"
        reason: str | None = None
        phase = status.phase if status else None
        ready = any(c.type == "Ready" and c.status == "True" for c in (status.conditions or [])) if status else False
        restarts = 0
        for cs in (status.containerStatuses or []) if status else []:
            restarts += cs.restartCount or 0
            if cs.state and cs.state.waiting and cs.state.waiting.reason:
                reason = f"{cs.state.waiting.reason}: {cs.state.waiting.message or ''}".rstrip(": ")
                if cs.state.waiting.reason in _FATAL_WAITING:
                    state = "failed"
            last = cs.lastState.terminated if cs.lastState else None
            if last is not None and last.reason and reason is None:
                reason = f"last exit: {last.reason} (code {last.exitCode})"
        for cond in (status.conditions or []) if status else []:
            if cond.type == "PodScheduled" and cond.status == "False":
                reason = f"{cond.reason or 'Unschedulable'}: {cond.message or ''}".rstrip(": ")
        if meta.deletionTimestamp is not None:
            state = "stopping"
        elif phase == "Failed":
            state, reason = "failed", reason or (status.reason if status else None) or "pod failed"
        elif phase == "Running" and ready:  # serving; an earlier crash (e.g. OOMKilled) stays visible
            state = "ready"
            reason = reason if reason and reason.startswith("last exit") else None
        pod_ip = status.podIP if status else None
        started: datetime | None = status.startTime if status else None
        return ReplicaStatus(
            id=meta.name or "",
            status=state,
            version=int(labels.get(VERSION_LABEL, "0") or 0),
            pid=None,
            host=(pod.spec.nodeName if pod.spec else None) or "",
            url=f"http://{pod_ip}:{self.settings.kubernetes_replica_port}" if pod_ip else None,
            started_at=started,
            restarts=restarts,
            reason=reason,
            phase=phase,
            node=pod.spec.nodeName if pod.spec else None,
        )

    def _notify(self, name: str) -> None:
        runtime = self.runtime(name)
        if runtime.status == "running":
            self._ever_running.add(name)
        snapshot = (runtime.status, runtime.reason, tuple(runtime.ready_urls))
        if self._snapshots.get(name) != snapshot:
            self._snapshots[name] = snapshot
            self._on_change(name)
