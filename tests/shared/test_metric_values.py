"""Multiprocess metric values read the pid once, and a forked child still writes its own file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_CHILD = textwrap.dedent(
    """
    import os, sys
    import shared  # installs the value class
    from prometheus_client import Counter, values
    from shared import _metric_values

    assert values.ValueClass is not None and getattr(values.ValueClass, "_multiprocess", False)
    counter = Counter("modelserve_test_things_total", "Things.", ["kind"])
    counter.labels("a").inc(3)
    pid = os.fork()
    if pid == 0:
        assert _metric_values.process_identifier() == os.getpid()
        counter.labels("a").inc(5)
        os._exit(0)
    os.waitpid(pid, 0)
    assert _metric_values.process_identifier() == os.getpid()
    counter.labels("a").inc(1)
    print(os.getpid(), pid)
    """
)


def test_parent_and_forked_child_keep_their_own_samples(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    parent, child = done.stdout.split()
    assert {p.name for p in tmp_path.iterdir()} == {f"counter_{parent}.db", f"counter_{child}.db"}

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(tmp_path))
    text = generate_latest(registry).decode()
    # The parent's 3 + 1 and the child's 5 (it starts from zero in its own file after the fork).
    assert 'modelserve_test_things_total{kind="a"} 9.0' in text
