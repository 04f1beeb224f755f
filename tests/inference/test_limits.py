"""Hostile model files and calls: bounded XML parse before any engine, ONNX tensor sizes at load and per call,
a per-process memory bound (the replica refuses or restarts, never the host). Files are generated here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import pytest

from inference import memory_guard
from inference.runtimes import load_runtime
from inference.runtimes.xml_limits import check_xml_limits
from shared.errors import InvalidModel, PayloadTooLarge
from shared.settings import Settings
from tests.fixtures import models

ROOT = Path(__file__).resolve().parents[2]


def test_deeply_nested_xml_is_refused_with_constant_memory(tmp_path: Path) -> None:
    path = models.make_pmml_deeply_nested(tmp_path, mebibytes=60)
    assert path.stat().st_size >= 60 * 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as refused:
            check_xml_limits(path, max_depth=1000, max_elements=5_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "pmml_max_xml_depth" in refused.value.detail
    assert peak < 16 * 1024 * 1024  # read in chunks: nothing near the file's size is ever held


def test_too_many_elements_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.pmml"
    path.write_bytes(b'<PMML version="4.4">' + b"<Extension/>" * 5000 + b"</PMML>")
    with pytest.raises(PayloadTooLarge) as refused:
        check_xml_limits(path, max_depth=1000, max_elements=1000)
    assert "pmml_max_xml_elements" in refused.value.detail
    check_xml_limits(path, max_depth=1000, max_elements=10_000)  # within the limits: no error


def test_load_refuses_hostile_pmml_before_any_parser(
    tmp_path: Path, runtime_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference.runtimes import pmml

    def never(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the PMML loader must not see a file past the limits")

    monkeypatch.setattr(pmml, "load_pmml", never)
    with pytest.raises(PayloadTooLarge):
        load_runtime(models.make_pmml_deeply_nested(tmp_path, mebibytes=2), runtime_settings)


def test_pmml_fixtures_stay_within_the_default_limits(pmml_models: dict[str, Path]) -> None:
    defaults = Settings(environment="test")
    for path in pmml_models.values():
        check_xml_limits(path, max_depth=defaults.pmml_max_xml_depth, max_elements=defaults.pmml_max_xml_elements)


def test_onnx_graph_implying_a_huge_tensor_is_refused_at_load(tmp_path: Path, runtime_settings: Settings) -> None:
    path = models.make_onnx_constant_of_shape(tmp_path)
    assert path.stat().st_size < 400  # tiny file, 1.6 GB per call
    with pytest.raises(InvalidModel) as refused:
        load_runtime(path, runtime_settings)
    assert "onnx_max_tensor_bytes" in refused.value.detail
    small = load_runtime(models.make_onnx_constant_of_shape(tmp_path, side=10), runtime_settings)
    assert small.predict([{"x": [1.0]}])[0]["raw"]["y"] == [[2.0] * 10] * 10


def test_per_call_output_bytes_are_capped(tmp_path: Path, runtime_settings: Settings) -> None:
    settings = runtime_settings.model_copy(update={"onnx_max_output_bytes": 1024 * 1024})
    runtime = load_runtime(models.make_onnx_shape_from_input(tmp_path), settings)
    assert runtime.predict([{"shape": [2, 3]}])[0]["raw"]["y"] == [[1.0] * 3] * 2
    with pytest.raises(PayloadTooLarge) as refused:
        runtime.predict([{"shape": [1000, 1000]}])  # 4 MB of output
    assert "onnx_max_output_bytes" in refused.value.detail


_REPLICA = """
import sys
from pathlib import Path
from inference.memory_guard import limit_data_segment
from inference.runtimes import load_runtime
from shared.errors import ModelServeError
from shared.settings import Settings

limit_data_segment(int(sys.argv[2]))
settings = Settings(environment="test", data_dir=sys.argv[3], onnx_max_output_bytes=0)
runtime = load_runtime(Path(sys.argv[1]), settings)
try:
    runtime.predict([{"shape": [20000, 20000]}])
    print("allocated")
except ModelServeError as exc:
    print("refused", exc.status)
print("answered", runtime.predict([{"shape": [2, 2]}])[0]["raw"]["y"])
"""


def test_a_process_past_its_memory_limit_fails_the_call_and_keeps_serving(tmp_path: Path) -> None:
    model = models.make_onnx_shape_from_input(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", _REPLICA, str(model), str(768 * 1024 * 1024), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == ["refused 500", "answered [[1.0, 1.0], [1.0, 1.0]]"]


def test_watchdog_acts_once_resident_memory_passes_the_limit() -> None:
    seen: list[int] = []
    fired = threading.Event()

    def exceeded(used: int) -> None:
        seen.append(used)
        fired.set()

    watchdog = memory_guard.MemoryWatchdog(1024, 0.01, exceeded).start()
    assert fired.wait(30)
    watchdog.stop()
    assert seen and seen[0] > 1024
    quiet = threading.Event()
    memory_guard.MemoryWatchdog(1 << 50, 0.01, lambda _used: quiet.set()).start().stop()
    assert not quiet.wait(0.2)


def test_watchdog_exits_the_process_for_its_supervisor_to_restart() -> None:
    code = textwrap.dedent(
        """
        import time
        from inference.memory_guard import MemoryWatchdog
        MemoryWatchdog(1024, 0.01).start()
        time.sleep(60)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=90, check=False
    )
    assert run.returncode == memory_guard.EXIT_OUT_OF_MEMORY, run.stderr[-2000:]
