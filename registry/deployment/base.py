"""The deployment backend interface: callers state what a service should be; the backend converges to it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel

ServiceStatus = Literal["starting", "running", "degraded", "paused", "failed"]
ReplicaState = Literal["starting", "ready", "failed", "stopping"]


@dataclass(frozen=True)
class ServiceSpec:
    """What one service should look like, resolved to a concrete model version."""

    name: str
    model: str
    version: int
    replicas: int
    paused: bool = False
    cpu_reserve: float | None = None
    memory_reserve: int | None = None
    """MiB."""


class ReplicaStatus(BaseModel):
    id: str
    status: ReplicaState
    version: int
    pid: int | None = None
    host: str
    url: str | None = None
    started_at: datetime | None = None
    restarts: int = 0
    requests_served: int = 0
    rss_bytes: int | None = None
    over_memory: bool = False
    """RSS far above the service's memory reservation."""
    reason: str | None = None
    phase: str | None = None
    """The pod's phase (Kubernetes backend)."""
    node: str | None = None
    """The node the pod runs on (Kubernetes backend)."""


class ServiceRuntime(BaseModel):
    status: ServiceStatus
    reason: str | None = None
    replicas: list[ReplicaStatus]

    @property
    def ready_urls(self) -> list[str]:
        return [r.url for r in self.replicas if r.status == "ready" and r.url]


class DeploymentBackend(Protocol):
    """Local processes or Kubernetes objects; callers never know which."""

    async def start(self, on_change: Callable[[str], None]) -> None:
        """Begin supervising; `on_change(service)` is called when a service's ready replicas or status change."""
        ...

    async def apply(self, spec: ServiceSpec) -> None:
        """Converge a service to `spec` (create, scale, roll to a new version, pause)."""
        ...

    async def remove(self, name: str) -> None: ...

    async def restart_replica(self, name: str, replica_id: str) -> None:
        """Raises `NotFound` for an unknown replica."""
        ...

    def runtime(self, name: str) -> ServiceRuntime: ...

    async def close(self) -> None:
        """Stop supervising and stop every replica."""
        ...
