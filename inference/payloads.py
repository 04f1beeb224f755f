"""Records from a request: a JSON body in any of the predict forms, or an uploaded CSV / JSON file."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request

from inference.validation import records_from_body
from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed, field_error

MAX_TEST_FILE_BYTES = 64 * 1024 * 1024


def _cell(value: str) -> Any:
    # A CSV cell holding a JSON list feeds a tensor input such as skl2onnx's `X`.
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return value
    return value


def records_from_csv(data: bytes) -> list[dict[str, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationFailed("The CSV file is not UTF-8", errors=[field_error("file", "not UTF-8 text")]) from exc
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise ValidationFailed("The CSV file has no header row", errors=[field_error("file", "no header row")])
    records = []
    for i, row in enumerate(reader):
        if None in row:
            raise ValidationFailed(
                "A CSV row has more values than the header",
                errors=[field_error(f"file.row[{i}]", "more values than columns", expected=len(reader.fieldnames))],
            )
        records.append({k: _cell(v) for k, v in row.items() if v != "" and v is not None})
    if not records:
        raise ValidationFailed("The CSV file has no rows", errors=[field_error("file", "no data rows")])
    return records


def records_from_json_bytes(data: bytes, field: str = "body") -> list[dict[str, Any]]:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed("Invalid JSON", errors=[field_error(field, f"not valid JSON: {exc}")]) from exc
    if isinstance(body, list):  # a file may hold a plain list of records
        body = {"inputs": body}
    return records_from_body(body)


async def records_from_request(request: Request) -> list[dict[str, Any]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/json", "") or content_type.endswith("+json"):
        return records_from_json_bytes(await request.body())
    if content_type == "multipart/form-data":
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
            return records_from_csv(data)
        if name.endswith((".json", ".jsonl")) or "json" in kind:
            return records_from_json_bytes(data, "file")
        raise BadRequest("The file must be CSV (.csv) or JSON (.json)")
    raise UnsupportedMediaType("Send application/json or multipart/form-data with a CSV or JSON file")
