"""Reading records from a local CSV or JSON file (for the queued path, which takes JSON bodies only)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def _value(text: str) -> Any:
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    for kind in (int, float):
        try:
            return kind(stripped)
        except ValueError:
            continue
    return text


def read_records(path: Path) -> Any:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [{k: _value(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]
    return json.loads(path.read_text())
