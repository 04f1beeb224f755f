"""Score a modelserve dataset through a service and upload the result as a new dataset.

Needs Python 3.9+ and httpx (`pip install httpx`); a Parquet input also needs pyarrow (`pip install pyarrow`).

    MODELSERVE_API_KEY=<your API key> python score.py

The API key is read from the environment variable MODELSERVE_API_KEY (or SCORING_API_KEY, the name to use in a
modelserve `script` job) and never written into this file. It needs
the `admin` scope: the script downloads and uploads datasets and reads the model's description.

What it does:
  1. asks the service which model version it serves, and that version's inputs;
  2. downloads the input dataset (GET /api/v1/datasets/{name}/download) into a temporary directory and reads it:
     CSV, JSON lines, or Parquet (with pyarrow);
  3. turns each row into one record with MAPPING (below) and sends BATCH_SIZE records at a time to
     POST /api/v1/services/{service}/predict as {"inputs": [...]} (retrying briefly when the service is busy);
  4. writes every input column plus the prediction columns to a CSV file: `label` and `probability_<class>`
     (classification), `value` (regression), `cluster` (clustering), `component_<i>` (dimensionality
     reduction); a prediction column named like an input column is written as `prediction_<name>`;
  5. uploads the file as the output dataset (POST /api/v1/datasets); the name must not be taken yet.

Column mapping: MAPPING maps each model input to the dataset column that feeds it. A column named like the
input (exactly, or ignoring case) is used for it. A tensor input, such as the single input `X` with shape
[None, 4] of a scikit-learn model converted by skl2onnx, gets a LIST of columns, in the order the model expects
its features: by default every numeric column except the `id` column (ID_COLUMN), in the dataset's column
order. Check that this order is the order the model was trained with, and edit MAPPING if it is not, or if the
dataset has other numeric columns (a label, a target) that are not features. Inputs missing from MAPPING are
mapped the same way when the script runs; an input nothing fits stops the script before any call.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

# The values below are written by modelserve when it generates the script (each one a Python literal).
BASE_URL = "http://127.0.0.1:8000"
INPUT_DATASET = "input"
OUTPUT_DATASET = "output"
SERVICE = "service"
BATCH_SIZE = 500
API_KEY_ENV = "MODELSERVE_API_KEY"
ID_COLUMN = "id"
TIMEOUT_SECONDS = 120.0
RETRIES = 5

# Model input -> dataset column (or, for a tensor input, the list of columns in the model's feature order).
MAPPING: dict[str, Any] = {}


class Failed(Exception):
    """Stops the script with a message (and exit status 1)."""


def api(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """Call the API; retry a few times when the gateway or the service is briefly unavailable."""
    for attempt in range(RETRIES + 1):
        try:
            response = client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            if attempt == RETRIES:
                raise Failed(f"{method} {path}: {exc!r}") from exc
        else:
            if response.status_code not in (502, 503, 504) or attempt == RETRIES:
                break
        time.sleep(min(2**attempt * 0.5, 10))
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {"detail": response.text[:500]}
        errors = "".join(
            f"\n  {e.get('field')}: {e.get('message')}" for e in problem.get("errors") or [] if isinstance(e, dict)
        )
        raise Failed(f"{method} {path} answered {response.status_code}: {problem.get('detail')}{errors}")
    return response


def auto_mapping(inputs: list[dict[str, Any]], columns: list[dict[str, Any]], id_column: str = "id") -> dict[str, Any]:
    """Model input name -> the dataset column that feeds it, or the list of columns of a tensor input.

    A column named like the input (exactly, else ignoring case) feeds it. A tensor input (an ONNX input with a
    shape of two or more dimensions, such as skl2onnx's `X` [None, 4]) that no column is named like gets every
    numeric column except the `id` column and the columns that feed other inputs, in the dataset's order.
    Inputs nothing fits are left out.
    """
    numeric = re.compile(r"^(u?int\d*|float\d*|double|halffloat|decimal\d*(\(.*\))?)$")
    names = [str(c["name"]) for c in columns]
    by_lower: dict[str, str] = {}
    for name in names:
        by_lower.setdefault(name.lower(), name)
    mapping: dict[str, Any] = {}
    tensors = []
    for spec in inputs:
        name = spec["name"]
        if name in names:
            mapping[name] = name
        elif name.lower() in by_lower:
            mapping[name] = by_lower[name.lower()]
        elif len(spec.get("shape") or []) >= 2:
            tensors.append(name)
    used = set(mapping.values())
    features = [
        str(c["name"])
        for c in columns
        if numeric.match(str(c.get("type", "")).lower()) and str(c["name"]).lower() != id_column.lower()
        and c["name"] not in used
    ]  # fmt: skip
    for name in tensors:
        mapping[name] = list(features)
    return mapping


def resolve_mapping(inputs: list[dict[str, Any]], columns: list[dict[str, Any]]) -> dict[str, Any]:
    """MAPPING, completed for inputs it leaves out, and checked against the model and the dataset."""
    mapping = dict(MAPPING)
    names = {spec["name"]: spec for spec in inputs}
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise Failed(f"MAPPING names inputs the model does not have: {unknown}; the model's inputs: {sorted(names)}")
    automatic = auto_mapping([s for s in inputs if s["name"] not in mapping], columns, ID_COLUMN)
    mapping.update(automatic)
    column_names = {c["name"] for c in columns}
    problems = []
    for name, spec in names.items():
        source = mapping.get(name)
        if source is None:
            if spec.get("required", True):
                problems.append(f"no column for the input {name!r}: add it to MAPPING")
            continue
        wanted = source if isinstance(source, list) else [source]
        missing = [c for c in wanted if c not in column_names]
        if missing:
            problems.append(f"MAPPING[{name!r}] names columns the dataset does not have: {missing}")
        shape = spec.get("shape") or []
        if isinstance(source, list) and len(shape) == 2 and isinstance(shape[1], int) and len(source) != shape[1]:
            problems.append(
                f"the tensor input {name!r} takes {shape[1]} values per row, MAPPING[{name!r}] lists"
                f" {len(source)} columns: {source}; edit MAPPING"
            )
    if problems:
        raise Failed("Cannot map the dataset's columns to the model's inputs:\n  " + "\n  ".join(problems))
    return mapping


def read_rows(path: str, fmt: str | None) -> Iterator[dict[str, Any]]:
    """The dataset's rows as dicts, one at a time."""
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            yield from csv.DictReader(fh)
    elif fmt == "jsonl":
        with open(path, encoding="utf-8-sig") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
    elif fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise Failed("the input dataset is Parquet: install pyarrow (`pip install pyarrow`)") from exc
        for batch in pq.ParquetFile(path).iter_batches(batch_size=max(BATCH_SIZE, 1024)):
            yield from batch.to_pylist()
    else:
        raise Failed(f"unsupported dataset format {fmt!r}")


def missing(value: Any) -> bool:
    return value is None or value == ""


def record(row: dict[str, Any], mapping: dict[str, Any]) -> dict[str, Any]:
    """One predict record: a CSV cell stays text (modelserve converts it to the input's type); an empty cell
    is a missing value (left out, or null inside a tensor)."""
    out: dict[str, Any] = {}
    for name, source in mapping.items():
        if isinstance(source, list):
            out[name] = [None if missing(row.get(c)) else row.get(c) for c in source]
        elif not missing(row.get(source)):
            out[name] = row.get(source)
    return out


def prediction_cells(prediction: dict[str, Any]) -> dict[str, Any]:
    """The normalised prediction as flat columns."""
    cells: dict[str, Any] = {}
    if "label" in prediction:
        cells["label"] = prediction["label"]
    for cls, probability in (prediction.get("probabilities") or {}).items():
        cells[f"probability_{cls}"] = probability
    if "value" in prediction:
        cells["value"] = prediction["value"]
    if "cluster" in prediction:
        cells["cluster"] = prediction["cluster"]
    for i, component in enumerate(prediction.get("components") or []):
        cells[f"component_{i}"] = component
    return cells


def cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def score(client, rows, input_columns, mapping, out_path):
    """Predict every row in batches and write the CSV; answers the number of rows."""
    writer = None
    renamed: dict[str, str] = {}
    done = 0
    with open(out_path, "w", newline="", encoding="utf-8") as out:
        batch = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH_SIZE:
                writer = write_batch(client, batch, done, input_columns, mapping, out, writer, renamed)
                done += len(batch)
                batch = []
                print(f"scored {done} rows", flush=True)
        if batch:
            writer = write_batch(client, batch, done, input_columns, mapping, out, writer, renamed)
            done += len(batch)
        if writer is None:  # an empty dataset: the header of the input columns only
            csv.writer(out).writerow(input_columns)
    print(f"scored {done} rows", flush=True)
    return done


def write_batch(client, batch, offset, input_columns, mapping, out, writer, renamed):
    path = f"/api/v1/services/{quote(SERVICE, safe='')}/predict"
    try:
        answer = api(client, "POST", path, json={"inputs": [record(row, mapping) for row in batch]}).json()
    except Failed as exc:
        # The service names records as inputs[i]: say which rows of the dataset they are.
        text = re.sub(r"inputs\[(\d+)\]", lambda m: f"row {offset + int(m.group(1)) + 1}", str(exc))
        raise Failed(text) from exc
    predictions = answer.get("predictions") or []
    if len(predictions) != len(batch):
        raise Failed(f"the service answered {len(predictions)} predictions for {len(batch)} rows")
    for warning in answer.get("warnings") or []:
        if offset == 0:
            print(f"warning from the service: {warning}", file=sys.stderr)
    if writer is None:
        taken = set(input_columns)
        for name in prediction_cells(predictions[0]):
            renamed[name] = f"prediction_{name}" if name in taken else name
        writer = csv.DictWriter(out, fieldnames=[*input_columns, *renamed.values()], extrasaction="ignore")
        writer.writeheader()
    for row, prediction in zip(batch, predictions):  # noqa: B905 - Python 3.9 has no strict=; lengths checked
        line = {c: cell(row.get(c)) for c in input_columns}
        line.update({renamed[k]: cell(v) for k, v in prediction_cells(prediction).items() if k in renamed})
        writer.writerow(line)
    return writer


def main() -> int:
    # SCORING_API_KEY lets a `script` batch job pass the key (MODELSERVE_* names are reserved there).
    key = os.environ.get("SCORING_API_KEY") or os.environ.get(API_KEY_ENV)
    if not key:
        print(f"Set the environment variable {API_KEY_ENV} to a modelserve API key (admin scope).", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=BASE_URL, headers=headers, timeout=TIMEOUT_SECONDS) as client:
        service = api(client, "GET", f"/api/v1/services/{quote(SERVICE, safe='')}").json()
        if service.get("version") is None:
            raise Failed(f"the service {SERVICE!r} serves no model version now ({service.get('reason')})")
        model, version = service["model"], service["version"]
        described = api(client, "GET", f"/api/v1/models/{quote(model, safe='')}/versions/{version}").json()
        dataset = api(client, "GET", f"/api/v1/datasets/{quote(INPUT_DATASET, safe='')}").json()
        columns = dataset.get("columns") or []
        mapping = resolve_mapping(described.get("inputs") or [], columns)
        print(f"service {SERVICE!r} serves model {model!r} version {version}; mapping: {json.dumps(mapping)}")

        with tempfile.TemporaryDirectory(prefix="modelserve-score-") as tmp:
            source = os.path.join(tmp, "input")
            url = f"/api/v1/datasets/{quote(INPUT_DATASET, safe='')}/download"
            with client.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise Failed(f"GET {url} answered {response.status_code}: {response.text[:500]}")
                with open(source, "wb") as fh:
                    for chunk in response.iter_bytes(1 << 20):
                        fh.write(chunk)
            print(f"downloaded {INPUT_DATASET!r} ({dataset.get('format')}, {dataset.get('rows')} rows)")

            input_columns = [c["name"] for c in columns]
            out_path = os.path.join(tmp, f"{OUTPUT_DATASET}.csv")
            rows = score(client, read_rows(source, dataset.get("format")), input_columns, mapping, out_path)

            description = f"{INPUT_DATASET} scored by service {SERVICE} (model {model} version {version})"
            with open(out_path, "rb") as fh:
                created = api(
                    client,
                    "POST",
                    "/api/v1/datasets",
                    data={"name": OUTPUT_DATASET, "description": description},
                    files={"file": (f"{OUTPUT_DATASET}.csv", fh, "text/csv")},
                ).json()
    print(f"uploaded {OUTPUT_DATASET!r}: {created.get('rows', rows)} rows, {len(created.get('columns') or [])} columns")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
