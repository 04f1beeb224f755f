"""The local backend: each replica is its own pinned inference process, supervised by the registry.

Long module: one backend; supervising, rolling and re-adopting replicas are one contract.

TorchServe's per-model worker processes are the precedent. A reconcile loop restarts replicas that die
(with backoff), polls each one's readiness and request count, and reports changes so the gateway's
routing table follows. Version changes roll one replica at a time: a new replica must be ready before
an old one leaves the routes, and an old one is drained before it is stopped.

Serving does not depend on the registry staying up. Replicas are not tied to the registry's life (no parent
death signal; under `modelserve up` an orphaned replica becomes `up`'s child, and `up` stops it at the end),
and each one is recorded in `<data_dir>/run/replicas/<id>.json` (pid, start time, port, version, argv). A
registry that starts again re-adopts the recorded replicas that still run, instead of starting new ones, so
the gateway keeps routing to the same processes while the registry is away and after it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil
from prometheus_client import Counter, Gauge

from registry.deployment.base import ReplicaState, ReplicaStatus, ServiceRuntime, ServiceSpec, ServiceStatus
from shared.auth import INTERNAL_TOKEN_HEADER
from shared.errors import NotFound
from shared.settings import Settings
from shared.supervisor import AdoptedProcess, Child, ChildSpec, free_port, java_env

log = logging.getLogger(__name__)

SERVICE_REPLICAS = Gauge(
    "modelserve_service_replicas",
    "Replicas of each service by state.",
    ["service", "state"],
    multiprocess_mode="livemax",
)
SERVICE_RESTARTS = Counter(
    "modelserve_service_restarts_total", "Replicas restarted after dying, by service.", ["service"]
)
_STATES: tuple[ReplicaState, ...] = ("starting", "ready", "failed", "stopping")
ADOPT_GRACE_SECONDS = 30.0
"""A re-adopted replica whose service the restarted registry has not re-applied by then is stopped."""
_ENV_EXTRAS = ("MODELSERVE_CPU_AFFINITY", "MODELSERVE_ONNX_INTRA_OP_THREADS")


@dataclass(eq=False)
class _Replica:
    id: str
    service: str
    version: int
    port: int
    index: int
    child: Child
    state: ReplicaState = "starting"
    restarts: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    spawned: float = field(default_factory=time.monotonic)
    requests: int = 0
    reason: str | None = None
    rss: int | None = None
    stopping: bool = False
    restart_at: float | None = None


class LocalBackend:
    """Replicas as child processes of this (registry) process."""

    def __init__(self, settings: Settings, *, poll_interval: float = 0.5, drain_seconds: float = 1.0) -> None:
        self.settings = settings
        self.poll_interval = poll_interval
        self.drain_seconds = drain_seconds
        self._specs: dict[str, ServiceSpec] = {}
        self._replicas: dict[str, dict[str, _Replica]] = {}
        self._counters: dict[str, int] = {}
        self._converging: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._ever_running: set[str] = set()
        self._snapshots: dict[str, tuple[object, ...]] = {}
        self._on_change: Callable[[str], None] = lambda _name: None
        self._loop_task: asyncio.Task[None] | None = None
        self._records = settings.data_dir / "run" / "replicas"
        self._unclaimed: set[str] = set()
        self._adopted_at = 0.0
        headers = {INTERNAL_TOKEN_HEADER: settings.internal_token} if settings.internal_token else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=2.0)

    # --- the interface -------------------------------------------------------------------------------------

    async def start(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        adopted = self._adopt()
        if adopted:
            # Know which adopted replicas serve before the first change event, so the routes never lose them.
            await asyncio.gather(*(self._check(r) for r in adopted))
            self._unclaimed = {r.service for r in adopted}
            self._adopted_at = time.monotonic()
        self._loop_task = asyncio.create_task(self._reconcile_forever())

    async def apply(self, spec: ServiceSpec) -> None:
        self._specs[spec.name] = spec
        self._unclaimed.discard(spec.name)
        self._kick(spec.name)

    async def remove(self, name: str) -> None:
        self._specs.pop(name, None)
        self._kick(name)
        task = self._converging.get(name)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def restart_replica(self, name: str, replica_id: str) -> None:
        replica = self._replicas.get(name, {}).get(replica_id)
        if replica is None or replica.stopping:
            raise NotFound(f"Service '{name}' has no replica '{replica_id}'")
        await self._retire(replica, notify=True)
        self._kick(name)

    def runtime(self, name: str) -> ServiceRuntime:
        spec = self._specs.get(name)
        replicas = list(self._replicas.get(name, {}).values())
        statuses = [self._replica_status(r) for r in replicas]
        if spec is None or spec.paused:
            return ServiceRuntime(status="paused", replicas=statuses)
        serving = [r for r in replicas if not r.stopping]
        ready = [r for r in serving if r.state == "ready"]
        failed = [r for r in serving if r.state == "failed"]
        current_ready = [r for r in ready if r.version == spec.version]
        status: ServiceStatus
        reason = failed[0].reason if failed else None
        if len(current_ready) >= spec.replicas and len(ready) == len(current_ready):
            status = "running"
        elif not ready and failed:
            status = "failed"
        elif name in self._ever_running or failed:
            status = "degraded"
        else:
            status = "starting"
        return ServiceRuntime(status=status, reason=reason, replicas=statuses)

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in self._converging.values():
            task.cancel()
        everyone = [r for reps in self._replicas.values() for r in reps.values()]
        for replica in everyone:
            replica.child.terminate()
        await asyncio.gather(*(asyncio.to_thread(self._reap, r) for r in everyone))
        for replica in everyone:
            self._forget(replica)
        self._replicas.clear()
        await self._client.aclose()

    # --- converging a service to its spec ------------------------------------------------------------------

    def _kick(self, name: str) -> None:
        self._dirty.add(name)
        task = self._converging.get(name)
        if task is None or task.done():
            self._converging[name] = asyncio.create_task(self._converge(name))

    async def _converge(self, name: str) -> None:
        while name in self._dirty:
            self._dirty.discard(name)
            try:
                await self._converge_once(name)
            except Exception:
                log.exception("converging service %s failed", name)
        self._notify(name)

    async def _converge_once(self, name: str) -> None:
        while True:
            spec = self._specs.get(name)
            replicas = self._replicas.setdefault(name, {})
            live = [r for r in replicas.values() if not r.stopping]
            if spec is None or spec.paused:
                await asyncio.gather(*(self._retire(r, notify=False) for r in live))
                self._ever_running.discard(name)
                if spec is None:
                    self._replicas.pop(name, None)
                    self._snapshots.pop(name, None)
                    self._clear_metrics(name)
                self._notify(name)
                return
            current = [r for r in live if r.version == spec.version]
            old = [r for r in live if r.version != spec.version]
            if old:
                # Surge one replica of the new version; retire an old one only once it serves.
                fresh = self._spawn(spec)
                if not await self._wait_ready(fresh):
                    log.warning("rolling %s to v%d stopped: %s", name, spec.version, fresh.reason)
                    return
                await self._retire(old[0], notify=True)
                continue
            if len(current) < spec.replicas:
                for _ in range(spec.replicas - len(current)):
                    self._spawn(spec)
            elif len(current) > spec.replicas:
                extra = sorted(current, key=lambda r: r.index)[spec.replicas :]
                await asyncio.gather(*(self._retire(r, notify=True) for r in extra))
            return

    def _spawn(self, spec: ServiceSpec) -> _Replica:
        index = self._counters.get(spec.name, 0)
        self._counters[spec.name] = index + 1
        port = free_port(self.settings.replica_host)
        replica_id = f"{spec.name}-{index}"
        child = Child(ChildSpec(f"replica {replica_id}", self._argv(spec, port), self._env(spec, index),
                                die_with_parent=False))  # fmt: skip
        replica = _Replica(replica_id, spec.name, spec.version, port, index, child)
        child.start()
        self._replicas.setdefault(spec.name, {})[replica_id] = replica
        self._record(replica)
        log.info("started replica %s (pid %s) of %s v%d", replica_id, child.pid, spec.model, spec.version)
        return replica

    def _argv(self, spec: ServiceSpec, port: int) -> list[str]:
        return [
            sys.executable, "-m", "modelserve.server", "inference",
            "--host", self.settings.replica_host, "--port", str(port),
            "--service", spec.name, "--model", spec.model, "--version", str(spec.version),
        ]  # fmt: skip

    def _env(self, spec: ServiceSpec, index: int) -> dict[str, str]:
        env = java_env(dict(os.environ))
        # A replica stops itself when this process is gone (`modelserve.server`): under `modelserve up` the variable
        # names `up`, so replicas outlive a registry restart; a registry run on its own takes them along.
        env.setdefault("MODELSERVE_SUPERVISOR_PID", str(os.getpid()))
        if spec.cpu_reserve:
            cores = (
                sorted(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else list(range(os.cpu_count() or 1))
            )
            wanted = min(len(cores), max(1, math.ceil(spec.cpu_reserve)))
            start = (index * wanted) % len(cores)
            chosen = [cores[(start + i) % len(cores)] for i in range(wanted)]
            env["MODELSERVE_CPU_AFFINITY"] = ",".join(map(str, chosen))
            env["MODELSERVE_ONNX_INTRA_OP_THREADS"] = str(wanted)
        return env

    async def _wait_ready(self, replica: _Replica) -> bool:
        deadline = time.monotonic() + self.settings.replica_ready_timeout_seconds
        while time.monotonic() < deadline:
            if replica.state == "ready":
                return True
            if replica.state == "failed" or replica.stopping:
                return False
            await asyncio.sleep(0.1)
        replica.state, replica.reason = "failed", "not ready in time"
        return False

    async def _retire(self, replica: _Replica, *, notify: bool) -> None:
        """Take a replica out of the routes, let in-flight requests finish, then stop it."""
        if replica.stopping:
            return
        replica.stopping, replica.state = True, "stopping"
        if notify:
            self._notify(replica.service)
            await asyncio.sleep(self.drain_seconds)
        replica.child.terminate()
        await asyncio.to_thread(self._reap, replica)
        self._replicas.get(replica.service, {}).pop(replica.id, None)
        self._forget(replica)
        log.info("stopped replica %s", replica.id)

    @staticmethod
    def _reap(replica: _Replica) -> None:
        if not replica.child.wait(10):
            replica.child.kill()

    # --- watching replicas ---------------------------------------------------------------------------------

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("replica reconcile failed")
            await asyncio.sleep(self.poll_interval)

    async def reconcile(self) -> None:
        if self._unclaimed and time.monotonic() - self._adopted_at > ADOPT_GRACE_SECONDS:
            for name in self._unclaimed - set(self._specs):
                log.warning("stopping the re-adopted replicas of %s: the service is no longer deployed", name)
                self._kick(name)
            self._unclaimed = set()
        replicas = [r for reps in self._replicas.values() for r in reps.values() if not r.stopping]
        await asyncio.gather(*(self._check(r) for r in replicas))
        for name in list(self._replicas):
            self._notify(name)

    async def _check(self, replica: _Replica) -> None:
        now = time.monotonic()
        child = replica.child
        if not child.alive():
            if replica.restart_at is None:
                code = child.process.returncode if child.process else None
                uptime = now - replica.spawned
                delay = 0.2 if uptime > 60 else min(10.0, 0.2 * 2 ** min(replica.restarts, 6))
                replica.restart_at = now + delay
                replica.state, replica.reason = "starting", f"exited with code {code}; restarting"
                log.warning("replica %s (pid %s) exited with code %s; restarting", replica.id, child.pid, code)
            elif now >= replica.restart_at:
                replica.restart_at = None
                replica.restarts += 1
                replica.spawned = now
                replica.started_at = datetime.now(UTC)
                child.start()
                self._record(replica)
                SERVICE_RESTARTS.labels(replica.service).inc()
                log.warning("restarted replica %s (pid %s, restart #%d)", replica.id, child.pid, replica.restarts)
            return
        try:
            resp = await self._client.get(f"http://{self.settings.replica_url_host}:{replica.port}/internal/stats")
            stats = resp.json()
        except (httpx.HTTPError, ValueError):
            if replica.state == "ready":
                replica.state, replica.reason = "starting", "not answering"
            elif now - replica.spawned > self.settings.replica_ready_timeout_seconds:
                replica.state, replica.reason = "failed", "not answering"
            return
        replica.requests = int(stats.get("requests", 0))
        if stats.get("error"):
            replica.state, replica.reason = "failed", str(stats["error"])[:1000]
        elif stats.get("ready"):
            replica.state, replica.reason = "ready", None
        with contextlib.suppress(psutil.Error):
            if child.pid is not None:
                replica.rss = psutil.Process(child.pid).memory_info().rss

    # --- the replica records a restarted registry re-adopts ------------------------------------------------------

    def _record(self, replica: _Replica) -> None:
        pid = replica.child.pid
        if pid is None:
            return
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        record = {
            "id": replica.id, "service": replica.service, "version": replica.version, "port": replica.port,
            "index": replica.index, "pid": pid, "create_time": created, "restarts": replica.restarts,
            "started_at": replica.started_at.isoformat(), "argv": replica.child.spec.argv,
            "env": {k: v for k, v in replica.child.spec.env.items() if k in _ENV_EXTRAS},
        }  # fmt: skip
        try:
            self._records.mkdir(parents=True, exist_ok=True)
            path = self._records / f"{replica.id}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(path)
        except OSError:
            log.exception("could not record replica %s", replica.id)

    def _forget(self, replica: _Replica) -> None:
        with contextlib.suppress(OSError):
            (self._records / f"{replica.id}.json").unlink(missing_ok=True)

    def _adopt(self) -> list[_Replica]:
        """Take over the recorded replicas that still run (the same process: pid and start time)."""
        adopted: list[_Replica] = []
        if not self._records.is_dir():
            return adopted
        for path in sorted(self._records.glob("*.json")):
            try:
                record: dict[str, Any] = json.loads(path.read_text())
                process = psutil.Process(int(record["pid"]))
                same = abs(process.create_time() - float(record["create_time"])) < 0.01
                if not same or process.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(int(record["pid"]))
            except (OSError, ValueError, KeyError, TypeError, psutil.Error):
                path.unlink(missing_ok=True)  # gone (or not ours any more): nothing to adopt
                continue
            replica = self._adopt_one(record, process)
            adopted.append(replica)
            log.warning("re-adopted replica %s (pid %s) of %s v%d", replica.id, replica.child.pid,
                        replica.service, replica.version)  # fmt: skip
        return adopted

    def _adopt_one(self, record: dict[str, Any], process: psutil.Process) -> _Replica:
        service, index = str(record["service"]), int(record["index"])
        env = java_env(dict(os.environ))
        env.update({k: str(v) for k, v in (record.get("env") or {}).items() if k in _ENV_EXTRAS})
        spec = ChildSpec(f"replica {record['id']}", [str(a) for a in record["argv"]], env, die_with_parent=False)
        child = Child(spec, process=AdoptedProcess(process))
        child.started_at = time.monotonic()
        replica = _Replica(str(record["id"]), service, int(record["version"]), int(record["port"]), index, child)
        replica.restarts = int(record.get("restarts") or 0)
        with contextlib.suppress(ValueError, TypeError):
            replica.started_at = datetime.fromisoformat(str(record["started_at"]))
        self._replicas.setdefault(service, {})[replica.id] = replica
        self._counters[service] = max(self._counters.get(service, 0), index + 1)
        return replica

    def _replica_status(self, r: _Replica) -> ReplicaStatus:
        spec = self._specs.get(r.service)
        over = bool(
            spec
            and spec.memory_reserve
            and r.rss
            and r.rss > spec.memory_reserve * 2**20 * self.settings.memory_over_factor
        )
        return ReplicaStatus(
            id=r.id,
            status=r.state,
            version=r.version,
            pid=r.child.pid if r.child.alive() else None,
            host=self.settings.replica_url_host,
            url=f"http://{self.settings.replica_url_host}:{r.port}",
            started_at=r.started_at,
            restarts=r.restarts,
            requests_served=r.requests,
            rss_bytes=r.rss,
            over_memory=over,
            reason=r.reason,
        )

    def _notify(self, name: str) -> None:
        runtime = self.runtime(name)
        if runtime.status == "running":
            self._ever_running.add(name)
        snapshot = (runtime.status, runtime.reason, tuple(runtime.ready_urls))
        counts = {state: 0 for state in _STATES}
        for replica in runtime.replicas:
            counts[replica.status] += 1
        for state, count in counts.items():
            SERVICE_REPLICAS.labels(name, state).set(count)
        if self._snapshots.get(name) != snapshot:
            self._snapshots[name] = snapshot
            self._on_change(name)

    @staticmethod
    def _clear_metrics(name: str) -> None:
        for state in _STATES:
            SERVICE_REPLICAS.labels(name, state).set(0)
