"""Records given on the command line: `--data '<json>'` (or `@file.json`, or `-` for stdin), or `--file rows.csv`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from modelserve.cli.output import fail


def parse_data(data: str) -> Any:
    text = sys.stdin.read() if data == "-" else Path(data[1:]).read_text() if data.startswith("@") else data
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f"--data is not valid JSON: {exc}")


def records_argument(data: str | None, file: Path | None) -> Any:
    """What the client sends: parsed JSON, or the file's Path (uploaded as it is, CSV or JSON)."""
    if (data is None) == (file is None):
        fail("give the records with exactly one of --data JSON or --file rows.csv")
    if file is not None:
        if not file.is_file():
            fail(f"no such file: {file}")
        return file
    assert data is not None
    return parse_data(data)


def write_predictions(path: Path, predictions: list[dict[str, Any]], inputs: Path | None) -> int:
    """Predictions as CSV (the input CSV's columns first when the input was a CSV), or JSON for `.json`."""
    if path.suffix.lower() in (".json", ".jsonl"):
        path.write_text(json.dumps(predictions, indent=2))
        return len(predictions)
    from modelserve.types import Predictions

    rows = Predictions(predictions=predictions).rows()
    if inputs is not None and inputs.suffix.lower() == ".csv":
        with inputs.open(newline="") as handle:
            original = list(csv.DictReader(handle))
        if len(original) == len(rows):
            rows = [{**source, **row} for source, row in zip(original, rows, strict=True)]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)
