"""Runs the code of a `script` batch job in a sandboxed subprocess.

The sandbox is a process boundary, not a container: the script runs as the worker's user, but in

- its own working directory (`script.py`, a copy of each input dataset named after it, an empty `output/`);
- a clean environment: PATH, HOME (= the working directory), LANG, PYTHONUNBUFFERED and the job's own variables,
  never the worker's `MODELSERVE_*` settings, tokens or keys (and the job may not set `MODELSERVE_*` itself);
- an address-space limit (`RLIMIT_AS`), no core dumps, and `PR_SET_PDEATHSIG` so it dies with the worker;
- its own process group, killed as a whole on timeout, on stop, and after the script exits (no stray children).

Its stdout and stderr are merged and streamed line by line to `on_log`; files it leaves under `output/` are the
run's outputs.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shared.errors import ValidationFailed, field_error
from shared.settings import Settings

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 200
MAX_LINE_CHARS = 4096
"""Longer output lines are cut (the rest of the line is dropped, the cut marked with `…`)."""
POLL_SECONDS = 0.2
FORBIDDEN_ENV_PREFIX = "MODELSERVE_"
_PR_SET_PDEATHSIG = 1
_MIB = 1024 * 1024
_DATA_SUFFIXES = {".csv", ".jsonl", ".json", ".parquet"}


@dataclass
class ScriptSpec:
    code: str
    interpreter: str
    """A key of `settings.script_interpreters`."""
    args: list[str]
    env: dict[str, str]
    timeout_seconds: float
    memory_limit_mb: int
    inputs: dict[str, Path]
    """Dataset name -> local file, copied into the working directory as `<name><ext>`."""


@dataclass
class ScriptResult:
    exit_code: int
    """The script's exit status; negative: killed by that signal."""
    outputs: list[Path]
    """Regular files the script wrote under `workdir/output/` (symlinks are ignored)."""
    log_tail: list[str]
    """The last 200 lines of stdout and stderr."""
    timed_out: bool
    stopped: bool


def interpreters(settings: Settings) -> dict[str, str]:
    """The interpreters a script job may choose, name -> executable."""
    return dict(settings.script_interpreters) or {"python3": sys.executable}


def check_spec(spec: ScriptSpec, settings: Settings | None = None) -> str:
    """Refuse what cannot run (422 naming the job's parameter); answer the interpreter's executable."""
    settings = settings or Settings()
    errors = []
    choices = interpreters(settings)
    executable = choices.get(spec.interpreter)
    if executable is None:
        errors.append(
            field_error(
                "params.interpreter", "unknown interpreter", expected=sorted(choices), received=spec.interpreter
            )
        )
    for key in spec.env:
        if key.upper().startswith(FORBIDDEN_ENV_PREFIX):
            errors.append(
                field_error(f"params.env.{key}", f"variables starting with {FORBIDDEN_ENV_PREFIX} are reserved")
            )
        elif not key or "=" in key or "\x00" in key or "\x00" in spec.env[key]:
            errors.append(field_error(f"params.env.{key}", "not a valid environment variable"))
    for name in spec.inputs:
        if not name or "/" in name or "\x00" in name or name.startswith(".") or name in ("script.py", "output"):
            errors.append(field_error(f"params.inputs.{name}", "not usable as a file name"))
    for i, arg in enumerate(spec.args):
        if "\x00" in arg:
            errors.append(field_error(f"params.args[{i}]", "contains a NUL character"))
    if not spec.timeout_seconds > 0:
        errors.append(field_error("timeout_seconds", "must be positive", received=spec.timeout_seconds))
    if spec.memory_limit_mb < 16:
        errors.append(field_error("params.memory_limit_mb", "at least 16 MiB", received=spec.memory_limit_mb))
    if errors:
        fields = ", ".join(e["field"] for e in errors)
        raise ValidationFailed(f"The script job cannot run: {fields}", errors=errors)
    assert executable is not None
    return executable


def clean_env(spec: ScriptSpec, workdir: Path) -> dict[str, str]:
    """The script's whole environment: nothing of the worker's but PATH and LANG."""
    env = {
        "PATH": os.environ.get("PATH") or os.defpath,
        "HOME": str(workdir),
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(spec.env)
    env["HOME"] = str(workdir)
    return env


def input_file_name(name: str, source: Path) -> str:
    """`<dataset name><ext>`: the extension from the file's name, or sniffed from its content."""
    suffix = source.suffix.lower()
    if suffix not in _DATA_SUFFIXES:
        with source.open("rb") as fh:
            head = fh.read(4096)
        if head.startswith(b"PAR1"):
            suffix = ".parquet"
        elif head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
            suffix = ".jsonl"
        else:
            suffix = ".csv"
    return name if name.lower().endswith(suffix) else name + suffix


def prepare_workdir(spec: ScriptSpec, workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "script.py").write_text(spec.code, encoding="utf-8")
    output = workdir / "output"
    if output.exists():
        shutil.rmtree(output)
    output.mkdir()
    for name, source in spec.inputs.items():
        # A copy, not a hard link: the script may write to its inputs, and must not change the stored dataset.
        shutil.copyfile(source, workdir / input_file_name(name, source))


def _limits(memory_limit_mb: int) -> Callable[[], None]:
    limit = memory_limit_mb * _MIB

    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return apply


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class _LogPump(threading.Thread):
    """Reads the merged stdout/stderr line by line, cuts long lines, keeps the tail, calls `on_log`."""

    def __init__(self, stream: IO[bytes], on_log: Callable[[str], None]) -> None:
        super().__init__(name="script-log", daemon=True)
        self.stream = stream
        self.on_log = on_log
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)

    def run(self) -> None:
        limit = MAX_LINE_CHARS * 4  # bytes: enough for MAX_LINE_CHARS characters of UTF-8
        cut = False
        try:
            while chunk := self.stream.readline(limit):
                complete = chunk.endswith(b"\n")
                if cut:  # the rest of a line already emitted
                    cut = not complete
                    continue
                line = chunk.decode("utf-8", errors="replace").rstrip("\r\n")
                if not complete and len(chunk) >= limit:
                    cut = True
                if len(line) > MAX_LINE_CHARS or cut:
                    line = line[:MAX_LINE_CHARS] + "…"
                self._emit(line)
        except (OSError, ValueError):
            pass  # the pipe closed under us

    def _emit(self, line: str) -> None:
        self.tail.append(line)
        try:
            self.on_log(line)
        except Exception:
            log.exception("script log callback failed")


def run_script(
    spec: ScriptSpec,
    workdir: Path,
    on_log: Callable[[str], None],
    should_stop: Callable[[], bool],
    *,
    settings: Settings | None = None,
) -> ScriptResult:
    """Run `spec.code` with `spec.interpreter` in `workdir`; block until it ends, times out or is stopped."""
    executable = check_spec(spec, settings)
    workdir = workdir.resolve()
    prepare_workdir(spec, workdir)
    try:
        process = subprocess.Popen(
            [executable, "script.py", *spec.args],
            cwd=workdir,
            env=clean_env(spec, workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_limits(spec.memory_limit_mb),
        )
    except OSError as exc:  # a configured interpreter that is not there (or not executable) on this worker
        raise ValidationFailed(
            f"Interpreter '{spec.interpreter}' cannot start: {exc.strerror or exc}",
            errors=[field_error("params.interpreter", "cannot start", received=spec.interpreter)],
        ) from exc
    assert process.stdout is not None
    pump = _LogPump(process.stdout, on_log)
    pump.start()
    deadline = time.monotonic() + spec.timeout_seconds
    timed_out = stopped = False
    try:
        while process.poll() is None:
            if time.monotonic() >= deadline:
                timed_out = True
            else:
                try:
                    stopped = bool(should_stop())
                except Exception:
                    log.exception("should_stop failed; the script keeps running")
            if timed_out or stopped:
                _kill_group(process)
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(POLL_SECONDS)
    finally:
        # Also after a normal exit: children the script left behind go with it.
        _kill_group(process)
        process.wait()
        pump.join(5)
        if not pump.is_alive():  # else a process outside the group still holds the pipe: leave it to the thread
            process.stdout.close()
    if timed_out:
        pump._emit(f"[modelserve] the script ran past its timeout of {spec.timeout_seconds:g} s and was killed")
    elif stopped:
        pump._emit("[modelserve] the script was stopped")
    return ScriptResult(
        exit_code=process.returncode,
        outputs=collect_outputs(workdir / "output"),
        log_tail=list(pump.tail),
        timed_out=timed_out,
        stopped=stopped,
    )


def collect_outputs(output: Path) -> list[Path]:
    """Regular files under `output/`, sorted; symlinks (which could point anywhere) are left out."""
    if not output.is_dir() or output.is_symlink():
        return []
    found = []
    for root, dirs, files in os.walk(output):
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
        for name in files:
            path = Path(root) / name
            if not path.is_symlink() and path.is_file():
                found.append(path)
    return sorted(found)
