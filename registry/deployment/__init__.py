"""Deployment backends: make a service's desired state real (`local` processes, or `kubernetes` Deployments)."""

from __future__ import annotations

from typing import Any

from registry.deployment.base import DeploymentBackend, ReplicaStatus, ServiceRuntime, ServiceSpec
from shared.settings import Settings

__all__ = ["DeploymentBackend", "ReplicaStatus", "ServiceRuntime", "ServiceSpec", "resolve_backend"]


def resolve_backend(settings: Settings, **kwargs: Any) -> DeploymentBackend:
    """The backend named by `settings.deployment_backend`: `local` processes or `kubernetes` Deployments."""
    if settings.deployment_backend == "local":
        from registry.deployment.local import LocalBackend

        return LocalBackend(settings, **kwargs)
    if settings.deployment_backend == "kubernetes":
        from registry.deployment.kubernetes import KubernetesBackend

        return KubernetesBackend(settings, **kwargs)
    raise ValueError(f"unknown deployment backend {settings.deployment_backend!r}")
