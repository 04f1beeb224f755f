"""The package layout holds: allowed imports (import-linter contracts), a docstring per package, short modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "gateway", "registry", "inference", "jobs", "modelserve")
MAX_LINES = 400
REASON = "Long module:"


def _packages() -> list[Path]:
    return [ROOT / name for name in PACKAGES if (ROOT / name / "__init__.py").exists()]


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache", str(ROOT / ".importlinter")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("package", _packages(), ids=lambda p: p.name)
def test_every_package_says_what_it_owns(package: Path) -> None:
    for init in [package / "__init__.py", *package.glob("*/__init__.py")]:
        if "migrations" in init.parts or "templates" in init.parts:
            continue
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and len(docstring) > 40, f"{init.relative_to(ROOT)} needs a paragraph saying what it owns"


def test_modules_stay_short_or_say_why() -> None:
    too_long = []
    for package in _packages():
        for module in package.rglob("*.py"):
            if "migrations" in module.parts:
                continue
            text = module.read_text()
            if text.count("\n") > MAX_LINES and REASON not in "\n".join(text.splitlines()[:15]):
                too_long.append(f"{module.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert not too_long, f"over {MAX_LINES} lines without a '{REASON}' reason at the top: {too_long}"
