"""A real Kubernetes API server (etcd + kube-apiserver + controller manager) and a test kubelet, on loopback.

The binaries are built once by `deploy/kubernetes/testenv/build.sh` into a cache outside the checkout (`.ci/run`
builds or reuses them). Without them these tests skip on a laptop and fail in CI.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from tests.conftest import IN_CI
from tests.k8s.kubelet import LocalKubelet

TESTENV = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "testenv"


def _controlplane_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("modelserve_k8s_testenv", TESTENV / "controlplane.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    module = _controlplane_module()
    bin_dir = module.cached_binaries()
    if bin_dir is None:
        message = "Kubernetes test binaries are not built: run deploy/kubernetes/testenv/build.sh (.ci/run does)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    plane = module.ControlPlane(tmp_path_factory.mktemp("k8s"), bin_dir).start()
    yield plane
    plane.stop()


@pytest.fixture
def kube(control_plane: object) -> Iterator[Client]:
    client = Client(config=KubeConfig.from_file(control_plane.kubeconfig))  # type: ignore[attr-defined]
    yield client
    client.close()


@pytest.fixture
def namespace(kube: Client) -> Iterator[str]:
    name = f"ms-test-{uuid.uuid4().hex[:8]}"
    kube.create(Namespace(metadata=ObjectMeta(name=name)))
    yield name
    kube.delete(Namespace, name)


@pytest.fixture
def kubelet(control_plane: object, namespace: str, tmp_path: Path) -> Iterator[LocalKubelet]:
    logs = tmp_path / "pods"
    logs.mkdir()
    node = LocalKubelet(control_plane.kubeconfig, namespace, logs).start()  # type: ignore[attr-defined]
    yield node
    node.stop()
