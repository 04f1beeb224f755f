"""The sandboxed runner of `script` jobs: workdir, clean environment, limits, timeout, stop, logs, outputs."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from jobs.script_runner import MAX_LINE_CHARS, ScriptResult, ScriptSpec, run_script
from shared.errors import ValidationFailed
from shared.settings import Settings


@pytest.fixture
def runner_settings(tmp_path: Path) -> Settings:
    return Settings(environment="test", data_dir=tmp_path / "data")


def spec(code: str, **kw: object) -> ScriptSpec:
    values: dict[str, object] = {
        "code": textwrap.dedent(code),
        "interpreter": "python3",
        "args": [],
        "env": {},
        "timeout_seconds": 30.0,
        "memory_limit_mb": 1024,
        "inputs": {},
    }
    values.update(kw)
    return ScriptSpec(**values)  # type: ignore[arg-type]


def run(s: ScriptSpec, workdir: Path, settings: Settings, stop: bool = False) -> tuple[ScriptResult, list[str]]:
    lines: list[str] = []
    result = run_script(s, workdir, lines.append, lambda: stop, settings=settings)
    return result, lines


def test_reads_inputs_and_lists_outputs(tmp_path: Path, runner_settings: Settings) -> None:
    stored = tmp_path / "store" / "ab12cd"  # content-addressed: no extension, sniffed as CSV
    stored.parent.mkdir()
    stored.write_text("id,x\n1,2.5\n2,3.5\n")
    code = """
        import csv, os, sys
        rows = list(csv.DictReader(open("iris.csv")))
        with open("output/result.csv", "w") as fh:
            fh.write("id,double\\n")
            for row in rows:
                fh.write(f"{row['id']},{float(row['x']) * 2}\\n")
        os.makedirs("output/more")
        open("output/more/args.txt", "w").write(" ".join(sys.argv[1:]))
        os.symlink("/etc/passwd", "output/leak.csv")
        open("iris.csv", "w").write("overwritten")
        print("done", len(rows), os.getcwd() == os.environ["HOME"])
    """
    workdir = tmp_path / "run"
    result, lines = run(spec(code, inputs={"iris": stored}, args=["--fast", "a b"]), workdir, runner_settings)
    assert result.exit_code == 0, result.log_tail
    assert not result.timed_out and not result.stopped
    assert result.outputs == [workdir / "output" / "more" / "args.txt", workdir / "output" / "result.csv"]
    assert (workdir / "output" / "result.csv").read_text() == "id,double\n1,5.0\n2,7.0\n"
    assert (workdir / "output" / "more" / "args.txt").read_text() == "--fast a b"
    assert lines == ["done 2 True"]
    assert stored.read_text() == "id,x\n1,2.5\n2,3.5\n"  # the script changed its copy only


def test_input_names_keep_or_get_their_extension(tmp_path: Path, runner_settings: Settings) -> None:
    (tmp_path / "a.parquet").write_bytes(b"PAR1....PAR1")
    (tmp_path / "b").write_bytes(b'{"x": 1}\n')
    (tmp_path / "c").write_bytes(b"PAR1....PAR1")
    code = "import os; print(sorted(os.listdir('.')))"
    inputs = {"a": tmp_path / "a.parquet", "b": tmp_path / "b", "c": tmp_path / "c"}
    result, lines = run(spec(code, inputs=inputs), tmp_path / "run", runner_settings)
    assert result.exit_code == 0
    assert lines == [str(["a.parquet", "b.jsonl", "c.parquet", "output", "script.py"])]


def test_environment_is_clean(tmp_path: Path, runner_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSERVE_SECRET", "s3cret-value")
    monkeypatch.setenv("MODELSERVE_INTERNAL_TOKEN", "internal-token-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    result, lines = run(spec(code, env={"GREETING": "hello"}), tmp_path / "run", runner_settings)
    assert result.exit_code == 0, result.log_tail
    env = json.loads(lines[0])
    assert "MODELSERVE_SECRET" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert not any(k.startswith("MODELSERVE_") for k in env)
    assert set(env) <= {"PATH", "HOME", "LANG", "PYTHONUNBUFFERED", "GREETING", "LC_CTYPE"}
    assert env["GREETING"] == "hello" and env["HOME"] == str((tmp_path / "run").resolve())
    assert "s3cret-value" not in lines[0] and "aws-secret-value" not in lines[0]


def test_timeout_kills_the_script_and_its_children(tmp_path: Path, runner_settings: Settings) -> None:
    code = """
        import subprocess, time
        child = subprocess.Popen(["sleep", "60"])
        open("child.pid", "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(60)
    """
    workdir = tmp_path / "run"
    started = time.monotonic()
    result, lines = run(spec(code, timeout_seconds=2.0), workdir, runner_settings)
    assert time.monotonic() - started < 45  # the script would sleep 60 s: it was ended, not waited for
    assert result.timed_out and not result.stopped and result.exit_code < 0
    assert lines[0] == "started" and "timeout" in result.log_tail[-1]
    child = int((workdir / "child.pid").read_text())

    def gone() -> bool:
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 5
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(), "the script's `sleep 60` survived the timeout"


def test_memory_limit_makes_a_big_allocation_fail(tmp_path: Path, runner_settings: Settings) -> None:
    code = """
        small = bytearray(10 * 1024 * 1024)
        print("small ok", flush=True)
        big = bytearray(2 * 1024 * 1024 * 1024)
        print("big ok")
    """
    result, lines = run(spec(code, memory_limit_mb=256), tmp_path / "run", runner_settings)
    assert result.exit_code != 0
    assert "small ok" in lines and "big ok" not in lines
    assert any("MemoryError" in line for line in result.log_tail)


def test_should_stop_stops_it(tmp_path: Path, runner_settings: Settings) -> None:
    lines: list[str] = []
    code = """
        import time
        print("ready", flush=True)
        time.sleep(60)
    """
    started = time.monotonic()
    result = run_script(spec(code), tmp_path / "run", lines.append, lambda: "ready" in lines, settings=runner_settings)
    assert time.monotonic() - started < 45  # the script would sleep 60 s: it was ended, not waited for
    assert result.stopped and not result.timed_out and result.exit_code < 0
    assert result.log_tail[-1] == "[modelserve] the script was stopped"


def test_output_lines_are_streamed_cut_and_tailed(tmp_path: Path, runner_settings: Settings) -> None:
    seen: list[tuple[float, str]] = []
    code = """
        import sys, time
        print("first", flush=True)
        time.sleep(1.0)
        print("x" * 100000)
        print("after the long line")
        print("to stderr", file=sys.stderr)
        for i in range(300):
            print(f"line {i}")
    """
    started = time.monotonic()
    result = run_script(
        spec(code),
        tmp_path / "run",
        lambda line: seen.append((time.monotonic() - started, line)),
        lambda: False,
        settings=runner_settings,
    )
    assert result.exit_code == 0
    lines = [line for _, line in seen]
    assert lines[0] == "first" and seen[0][0] < seen[-1][0] - 0.5  # arrived before the script ended
    assert lines[1] == "x" * MAX_LINE_CHARS + "…"
    assert lines[2:4] == ["after the long line", "to stderr"]
    assert len(lines) == 304 and lines[-1] == "line 299"
    assert len(result.log_tail) == 200 and result.log_tail[0] == "line 100" and result.log_tail[-1] == "line 299"


def test_unknown_interpreter_is_refused(tmp_path: Path, runner_settings: Settings) -> None:
    with pytest.raises(ValidationFailed) as caught:
        run(spec("print(1)", interpreter="ruby"), tmp_path / "run", runner_settings)
    assert caught.value.status == 422
    assert caught.value.errors and caught.value.errors[0]["field"] == "params.interpreter"
    assert caught.value.errors[0]["expected"] == ["python3"]
    assert not (tmp_path / "run").exists()


def test_configured_interpreters(tmp_path: Path, runner_settings: Settings) -> None:
    configured = runner_settings.model_copy(update={"script_interpreters": {"py": sys.executable}})
    result, lines = run(spec("print('hi')", interpreter="py"), tmp_path / "run", configured)
    assert result.exit_code == 0 and lines == ["hi"]
    with pytest.raises(ValidationFailed):  # the default is replaced, not extended
        run(spec("print('hi')"), tmp_path / "run2", configured)
    missing = runner_settings.model_copy(update={"script_interpreters": {"py": str(tmp_path / "nope")}})
    with pytest.raises(ValidationFailed) as caught:
        run(spec("print('hi')", interpreter="py"), tmp_path / "run3", missing)
    assert caught.value.errors and caught.value.errors[0]["field"] == "params.interpreter"


@pytest.mark.parametrize("key", ["MODELSERVE_ADMIN_KEY", "modelserve_internal_token", "MODELSERVE_"])
def test_modelserve_variables_are_refused(tmp_path: Path, runner_settings: Settings, key: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        run(spec("print(1)", env={"OK": "1", key: "x"}), tmp_path / "run", runner_settings)
    assert caught.value.status == 422
    errors = caught.value.errors or []
    assert [e["field"] for e in errors] == [f"params.env.{key}"]
    assert not (tmp_path / "run").exists()


def test_bad_input_names_are_refused(tmp_path: Path, runner_settings: Settings) -> None:
    source = tmp_path / "d.csv"
    source.write_text("a\n1\n")
    with pytest.raises(ValidationFailed) as caught:
        run(spec("print(1)", inputs={"../escape": source}), tmp_path / "run", runner_settings)
    assert caught.value.errors and caught.value.errors[0]["field"] == "params.inputs.../escape"
