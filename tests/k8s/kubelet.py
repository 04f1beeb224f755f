"""The test plays the node, as kwok does: a real API server schedules nothing and runs no container without one.

`LocalKubelet` registers a Node, binds pending pods to it, and runs each bound pod's own command (with the pod's
environment: values, `fieldRef: status.podIP`, `secretKeyRef`; `$(VAR)` expanded as the kubelet does) as a
local process on its own loopback address (127.0.0.N: every pod has its own IP, all on the same port, as in a
cluster). It runs readiness probes and reports the pod Running, then Ready; when the process dies it reports the
pod Failed (the ReplicaSet then makes a replacement); when a pod is deleted it stops the process and finishes the
deletion. Its working directory (a container's own filesystem) is a fresh directory per pod.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.core_v1 import ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Pod, Secret
from lightkube.types import PatchType

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Running:
    name: str
    ip: str
    process: subprocess.Popen[bytes]
    workdir: Path
    ready_path: str | None
    port: int | None
    ready: bool = False
    reported_dead: bool = False
    started: str = field(default_factory=_now)


class LocalKubelet:
    def __init__(self, kubeconfig: Path, namespace: str, logs: Path, node: str = "node-1") -> None:
        self.client = Client(config=KubeConfig.from_file(kubeconfig), namespace=namespace)
        self.namespace = namespace
        self.node = node
        self.logs = logs
        self.running: dict[str, _Running] = {}
        self._ips = (f"127.0.{i // 250}.{i % 250 + 2}" for i in itertools.count(10))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # --- life ------------------------------------------------------------------------------------------------

    def start(self) -> LocalKubelet:
        node = Node(metadata=ObjectMeta(name=self.node, labels={"kubernetes.io/hostname": self.node}))
        with contextlib.suppress(ApiError):
            self.client.create(node)
        self.client.patch(
            Node.Status,
            self.node,
            {
                "status": {
                    "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                    "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                    "conditions": [
                        {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": _now()}
                    ],
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                }
            },
            patch_type=PatchType.MERGE,
        )
        for target in (self._watch, self._monitor):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            names = list(self.running)
        for name in names:
            self._kill(name)
        for thread in self._threads:
            thread.join(10)

    def kill_process(self, pod_name: str) -> int:
        """What a crash does: SIGKILL the pod's process (the kubelet then reports the pod Failed)."""
        with self._lock:
            running = self.running[pod_name]
        running.process.kill()
        return running.process.pid

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {name: r.process.pid for name, r in self.running.items() if r.process.poll() is None}

    # --- pods ------------------------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                for kind, pod in self.client.watch(Pod, namespace=self.namespace, server_timeout=5):
                    if self._stop.is_set():
                        return
                    self._on_pod(kind, pod)
            except Exception:
                if not self._stop.is_set():
                    time.sleep(0.5)

    def _on_pod(self, kind: str, pod: Pod) -> None:
        assert pod.metadata is not None and pod.metadata.name and pod.spec is not None
        name = pod.metadata.name
        if kind == "DELETED":
            self._kill(name)
            return
        if pod.metadata.deletionTimestamp is not None:
            self._kill(name, grace=float(pod.metadata.deletionGracePeriodSeconds or 0))
            with contextlib.suppress(ApiError):
                self.client.delete(Pod, name, namespace=self.namespace, grace_period=0)
            return
        phase = pod.status.phase if pod.status else None
        if not pod.spec.nodeName:
            binding = Pod.Binding(
                metadata=ObjectMeta(name=name),
                target=ObjectReference(apiVersion="v1", kind="Node", name=self.node),
            )
            with contextlib.suppress(ApiError):
                self.client.create(binding, name=name, namespace=self.namespace)
            return
        if pod.spec.nodeName == self.node and phase in (None, "Pending") and name not in self.running:
            self._run(pod)

    def _run(self, pod: Pod) -> None:
        assert pod.metadata is not None and pod.metadata.name and pod.spec is not None
        name = pod.metadata.name
        container = pod.spec.containers[0]
        ip = next(self._ips)
        env = self._environment(pod, ip)
        argv = [
            _VAR.sub(lambda m: env.get(m[1], m[0]), part)
            for part in [*(container.command or []), *(container.args or [])]
        ]
        if argv and argv[0] == "modelserve":  # the image's entry point is this checkout's command
            argv = [sys.executable, "-m", "modelserve.server", *argv[1:]]
        workdir = Path(tempfile.mkdtemp(prefix=f"pod-{name}-"))
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            cwd=workdir,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        probe = container.readinessProbe.httpGet if container.readinessProbe else None
        port = int(probe.port) if probe is not None and probe.port is not None else None
        running = _Running(name, ip, process, workdir, probe.path if probe else None, port)
        with self._lock:
            self.running[name] = running
        self._patch_status(
            name,
            {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "hostIP": "127.0.0.1",
                "startTime": running.started,
                "conditions": self._conditions(ready=False),
                "containerStatuses": [self._container_status(container.name, running, restarts=0)],
            },
        )

    def _environment(self, pod: Pod, ip: str) -> dict[str, str]:
        assert pod.spec is not None
        env: dict[str, str] = {}
        for var in pod.spec.containers[0].env or []:
            if var.value is not None:
                env[var.name] = _VAR.sub(lambda m: env.get(m[1], m[0]), var.value)
            elif var.valueFrom is not None and var.valueFrom.fieldRef is not None:
                path = var.valueFrom.fieldRef.fieldPath
                env[var.name] = {"status.podIP": ip, "metadata.name": pod.metadata.name if pod.metadata else ""}.get(
                    path, ""
                )
            elif var.valueFrom is not None and var.valueFrom.secretKeyRef is not None:
                ref = var.valueFrom.secretKeyRef
                secret = self.client.get(Secret, ref.name, namespace=self.namespace)
                env[var.name] = base64.b64decode((secret.data or {}).get(ref.key, "")).decode()
        return env

    def _monitor(self) -> None:
        probe = httpx.Client(timeout=1.0)
        while not self._stop.is_set():
            with self._lock:
                current = list(self.running.values())
            for running in current:
                code = running.process.poll()
                if code is not None and not running.reported_dead:
                    running.reported_dead = True
                    self._patch_status(
                        running.name,
                        {
                            "phase": "Failed",
                            "reason": "Error",
                            "conditions": self._conditions(ready=False),
                            "containerStatuses": [
                                {
                                    "name": "replica",
                                    "ready": False,
                                    "restartCount": 0,
                                    "image": "modelserve",
                                    "imageID": "",
                                    "state": {
                                        "terminated": {
                                            "exitCode": code,
                                            "reason": "Error",
                                            "startedAt": running.started,
                                            "finishedAt": _now(),
                                        }
                                    },
                                }
                            ],
                        },
                    )
                elif code is None and not running.ready and running.port and running.ready_path:
                    try:
                        ok = probe.get(f"http://{running.ip}:{running.port}{running.ready_path}").status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if ok:
                        running.ready = True
                        self._patch_status(
                            running.name,
                            {
                                "conditions": self._conditions(ready=True),
                                "containerStatuses": [self._container_status("replica", running, restarts=0)],
                            },
                        )
            time.sleep(0.2)
        probe.close()

    def _kill(self, name: str, grace: float = 10.0) -> None:
        with self._lock:
            running = self.running.pop(name, None)
        if running is None:
            return
        if running.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.process.pid, signal.SIGTERM)
            try:
                running.process.wait(max(grace, 1.0))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait(10)
        shutil.rmtree(running.workdir, ignore_errors=True)

    # --- status ----------------------------------------------------------------------------------------------

    def _patch_status(self, name: str, status: dict[str, Any]) -> None:
        with contextlib.suppress(ApiError):
            self.client.patch(
                Pod.Status, name, {"status": status}, namespace=self.namespace, patch_type=PatchType.MERGE
            )

    @staticmethod
    def _conditions(*, ready: bool) -> list[dict[str, str]]:
        value = "True" if ready else "False"
        return [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()},
            {"type": "Initialized", "status": "True", "lastTransitionTime": _now()},
            {"type": "ContainersReady", "status": value, "lastTransitionTime": _now()},
            {"type": "Ready", "status": value, "lastTransitionTime": _now()},
        ]

    @staticmethod
    def _container_status(name: str, running: _Running, *, restarts: int) -> dict[str, Any]:
        return {
            "name": name,
            "ready": running.ready,
            "restartCount": restarts,
            "image": "modelserve",
            "imageID": "",
            "started": True,
            "state": {"running": {"startedAt": running.started}},
        }
