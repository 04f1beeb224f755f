"""A real Kubernetes control plane on loopback: etcd + kube-apiserver (token auth, RBAC) + kube-controller-manager.

For the Kubernetes backend's tests and for trying the backend by hand; there is no kubelet (the tests play the
node). The binaries come from `build.sh` beside this file (built once, cached outside the checkout).

    python deploy/kubernetes/testenv/controlplane.py --dir /tmp/k8s    # prints the kubeconfig path; Ctrl-C stops
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONTROLLERS = "deployment,replicaset,endpoint,endpointslice,garbagecollector,namespace"


def binaries() -> Path:
    """The cached binaries' directory, building them first when missing."""
    out = subprocess.run(["bash", str(HERE / "build.sh")], check=True, capture_output=True, text=True, timeout=3600)
    return Path(out.stdout.strip().splitlines()[-1])


def cached_binaries() -> Path | None:
    """The binaries' directory when they are already built, else None (never builds)."""
    cache = Path(os.environ.get("MODELSERVE_K8S_CACHE", Path.home() / ".cache/modelserve/k8s-1.20.2")) / "bin"
    names = ("kube-apiserver", "kube-controller-manager", "etcd")
    return cache if all(os.access(cache / n, os.X_OK) for n in names) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ControlPlane:
    """The three processes and what a client needs to reach them."""

    workdir: Path
    bin_dir: Path
    server: str = ""
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    kubeconfig: Path = Path()
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, timeout: float = 90.0) -> ControlPlane:
        d = self.workdir
        (d / "certs").mkdir(parents=True, exist_ok=True)
        sa_key, sa_pub = d / "sa.key", d / "sa.pub"
        if not sa_key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True)
            subprocess.run(
                ["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)], check=True, capture_output=True
            )
        tokens = d / "tokens.csv"
        tokens.write_text(f"{self.token},admin,admin,system:masters\n")
        tokens.chmod(0o600)
        etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
        self._spawn(
            "etcd",
            [
                "--name", "default", "--data-dir", str(d / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
            ],
        )  # fmt: skip
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
                "--insecure-port=0", f"--cert-dir={d / 'certs'}", f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
                "--disable-admission-plugins=ServiceAccount", "--endpoint-reconciler-type=none",
                "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=false",
            ],
        )  # fmt: skip
        self.server = f"https://127.0.0.1:{api_port}"
        self.kubeconfig = d / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.server, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin", "namespace": "default"}}],
            "current-context": "test",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))  # JSON is YAML: every client reads it
        self.kubeconfig.chmod(0o600)
        self._wait_ready(timeout)
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--port=0", "--secure-port=0",
                f"--controllers={CONTROLLERS}", f"--service-account-private-key-file={sa_key}",
                "--use-service-account-credentials=false", "--concurrent-deployment-syncs=5",
            ],
        )  # fmt: skip
        return self

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.processes.append(
            subprocess.Popen(
                [str(self.bin_dir / name), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(  # noqa: S310 (an https URL built here)
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}; see {self.workdir}")
            try:
                with urllib.request.urlopen(request, context=context, timeout=2) as resp:  # noqa: S310 (loopback)
                    if resp.read() == b"ok":
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready in {timeout} s; see {self.workdir}/kube-apiserver.log")

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.processes.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="working directory (etcd data, certs, logs)")
    args = parser.parse_args()
    plane = ControlPlane(args.dir.resolve(), binaries()).start()
    print(plane.kubeconfig, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while all(p.poll() is None for p in plane.processes):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        plane.stop()


if __name__ == "__main__":
    main()
