"""The README's quickstart, as written: its commands (between the quickstart markers) run against a fresh
`modelserve up`, so the README cannot drift from the product."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import Platform

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
README_URL = "http://127.0.0.1:8000"


def quickstart_commands(readme: str) -> list[str]:
    """The shell lines of the fenced blocks between `<!-- quickstart:begin -->` and `<!-- quickstart:end -->`."""
    match = re.search(r"<!-- quickstart:begin -->(.*?)<!-- quickstart:end -->", readme, re.S)
    assert match, "README.md has no quickstart markers"
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", match.group(1), re.S)
    assert blocks, "the quickstart has no bash block"
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.timeout(1200)  # about twenty commands, each a fresh Python process, on a possibly loaded machine
def test_the_quickstart_commands_succeed_as_written(platform: Platform, tmp_path: Path) -> None:
    commands = quickstart_commands((ROOT / "README.md").read_text())
    assert any(c.startswith("modelserve predict") for c in commands)
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("models"))
    script = "set -euo pipefail\n" + "\n".join(c.replace(README_URL, platform.url) for c in commands) + "\n"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
    # The README's `make up` put the venv on PATH; here the test's interpreter's bin is that venv.
    env = {**clean, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}",
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "NO_COLOR": "1", "COLUMNS": "160"}  # fmt: skip
    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, input=platform.admin_key + "\n", text=True,
                          capture_output=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, f"the quickstart failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert "setosa" in done.stdout
    scored = (work / "iris-scored.csv").read_text().splitlines()
    assert len(scored) == 1 + len((work / "examples" / "iris.csv").read_text().splitlines()) - 1
    assert (work / "iris-batch.csv").exists()
