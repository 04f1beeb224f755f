"""Records from a request: a JSON body in any of the predict forms, or an uploaded CSV / JSON file."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request

from inference.input_columns import input_columns, records_from_rows
from inference.runtimes.base import ModelDescription
from inference.validation import records_from_body
from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed, field_error
from shared.json_bodies import loads_json

MAX_TEST_FILE_BYTES = 64 * 1024 * 1024
_FORM_OVERHEAD = 1024 * 1024  # part headers and small fields around the file


def _cell(value: str) -> Any:
    # A CSV cell holding a JSON list feeds a tensor input such as skl2onnx's `X`.
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            return loads_json(text)
        except orjson.JSONDecodeError:
            return value
    return value


def records_from_csv(data: bytes, description: ModelDescription | None = None) -> list[dict[str, Any]]:
    """Records from a CSV file with a header row; for a model, its columns mapped to the inputs as batch
    jobs map them (`inference.input_columns`: a single `[N, k]` tensor input takes the columns in order)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed("The CSV file is not UTF-8", errors=[field_error("file", "not UTF-8 text")]) from exc
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise ValidationFailed("The CSV file has no header row", errors=[field_error("file", "no header row")])
    rows: list[list[Any]] = []
    for i, row in enumerate(reader):
        if not row:
            continue  # a blank line
        if len(row) > len(header):
            raise ValidationFailed(
                "A CSV row has more values than the header",
                errors=[field_error(f"file.row[{i}]", "more values than columns", expected=len(header))],
            )
        cells = [None if v == "" else _cell(v) for v in row]
        rows.append(cells + [None] * (len(header) - len(cells)))
    if not rows:
        raise ValidationFailed("The CSV file has no rows", errors=[field_error("file", "no data rows")])
    chosen = input_columns(description, header) if description is not None else {}
    return records_from_rows(header, rows, chosen)


def records_from_json_bytes(data: bytes, field: str = "body") -> list[dict[str, Any]]:
    try:
        body = loads_json(data)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed("Invalid JSON", errors=[field_error(field, f"not valid JSON: {exc}")]) from exc
    if isinstance(body, list):  # a file may hold a plain list of records
        body = {"inputs": body}
    return records_from_body(body)


async def records_from_request(request: Request, description: ModelDescription | None = None) -> list[dict[str, Any]]:
    """The records of a predict or test request: a JSON body, or a CSV/JSON file in a multipart form.

    `description` (the model's) maps a CSV file's columns to its inputs.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/json", "") or content_type.endswith("+json"):
        return records_from_json_bytes(await request.body())
    if content_type == "multipart/form-data":
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_TEST_FILE_BYTES + _FORM_OVERHEAD:
            # Before the form parser spools the body to a temporary file.
            raise PayloadTooLarge(f"Test files are limited to {MAX_TEST_FILE_BYTES} bytes")
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed(
                "Send the records as a file part named 'file'", errors=[field_error("file", "required")]
            )
        data = await upload.read(MAX_TEST_FILE_BYTES + 1)
        if len(data) > MAX_TEST_FILE_BYTES:
            raise PayloadTooLarge(f"Test files are limited to {MAX_TEST_FILE_BYTES} bytes")
        name = (upload.filename or "").lower()
        kind = (upload.content_type or "").lower()
        if name.endswith(".csv") or "csv" in kind:
            return records_from_csv(data, description)
        if name.endswith((".json", ".jsonl")) or "json" in kind:
            return records_from_json_bytes(data, "file")
        raise BadRequest("The file must be CSV (.csv) or JSON (.json)")
    raise UnsupportedMediaType("Send application/json or multipart/form-data with a CSV or JSON file")
