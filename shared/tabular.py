"""Tabular files (CSV, JSON lines, Parquet): inspect them, read them in chunks, write them. One set of rules.

Dataset upload inspects with `inspect_table`; batch runs read with `iter_chunks` and write with `write_table` and
`concatenate`. Both sides parse JSON lines with the same `_json_lines` (a byte-order mark on the first line, NaN
and Infinity accepted), CSV with the column types inspection settled on, Parquet one row group at a time, so a
file that passes inspection is a file a batch run can read.

Long module: inspection, chunked reading and writing share their parsers and type rules; split across files they
would drift apart again (the reason this module exists).
"""

from __future__ import annotations

import base64
import codecs
import json
import math
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from time import monotonic
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shared.errors import ValidationFailed, field_error

FORMATS = ("csv", "jsonl", "parquet")
_PREFIX_BYTES = 64 * 1024
_CSV_BLOCK_BYTES = 1 << 20
_MAX_LINE_BYTES = 16 << 20
_MAX_PREVIEW_TEXT = 1000
_PARQUET_MAGIC = b"PAR1"
_BOM = b"\xef\xbb\xbf"
_CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): CSV conversion error to (\w+)")


class InvalidDataset(ValidationFailed):
    """A file that is not a well-formed CSV, JSON lines or Parquet file; the reason names what is wrong."""

    title, slug = "Invalid dataset", "invalid-dataset"

    def __init__(self, reason: str, field_name: str = "file") -> None:
        self.reason = reason[:2000]
        super().__init__(f"Invalid dataset file: {self.reason}", errors=[field_error(field_name, self.reason)])


class InspectionTimedOut(ValidationFailed):
    """Inspecting the file took longer than the upload's limit (`upload_inspection_timeout_seconds`)."""

    title, slug = "Inspection timed out", "inspection-timed-out"

    def __init__(self, seconds: float) -> None:
        reason = f"the file could not be inspected within {seconds:g} s: split it or raise the limit"
        super().__init__(f"Dataset not accepted: {reason}", errors=[field_error("file", reason)])


class _Deadline:
    """Raises `InspectionTimedOut` once the time is up; checked between batches, cheap enough per line."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.at = None if seconds is None else monotonic() + seconds

    def check(self) -> None:
        if self.at is not None and monotonic() > self.at:
            raise InspectionTimedOut(float(self.seconds or 0))


@dataclass
class DatasetInfo:
    """What inspecting a file found."""

    format: str
    rows: int
    columns: list[dict[str, str]]
    preview: list[dict[str, Any]] = field(default_factory=list)


# --- inspection --------------------------------------------------------------------------------------------


def inspect_table(path: Path, preview_rows: int = 20, timeout_seconds: float | None = None) -> DatasetInfo:
    """Sniff the format from the content, check the whole file, count its rows and infer its columns.

    Past `timeout_seconds` it gives up with `InspectionTimedOut` (the upload is answered before any proxy in
    front of the registry gives up on it)."""
    deadline = _Deadline(timeout_seconds)
    if path.stat().st_size == 0:
        raise InvalidDataset("the file is empty")
    with path.open("rb") as fh:
        head = fh.read(_PREFIX_BYTES)
    if head.startswith(_PARQUET_MAGIC):
        return _inspect_parquet(path, preview_rows, deadline)
    if b"\x00" in head:
        raise InvalidDataset("binary content: not CSV or JSON lines text, and not Parquet (no PAR1 magic bytes)")
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise InvalidDataset(f"not UTF-8 text (byte {exc.start}), and not Parquet (no PAR1 magic bytes)") from exc
    start = text.lstrip("\ufeff \t\r\n")[:1]
    if not start:
        raise InvalidDataset("the file holds only whitespace")
    if start == "{":
        return _inspect_jsonl(path, preview_rows, deadline)
    if start == "[":
        raise InvalidDataset("a JSON array is not JSON lines: write one JSON object per line")
    return _inspect_csv(path, preview_rows, deadline)


def _inspect_parquet(path: Path, preview_rows: int, deadline: _Deadline) -> DatasetInfo:
    with path.open("rb") as fh:
        fh.seek(-4, 2)
        if fh.read(4) != _PARQUET_MAGIC:
            raise InvalidDataset("truncated Parquet file: the footer's PAR1 magic bytes are missing")
    try:
        with pq.ParquetFile(path) as parquet:
            declared = parquet.metadata.num_rows
            schema = parquet.schema_arrow
            rows = 0
            preview: list[dict[str, Any]] = []
            # Decode every page once (one row group at a time) so a corrupt body is refused now, not in a job.
            for batch in parquet.iter_batches(batch_size=65_536):
                deadline.check()
                if len(preview) < preview_rows:
                    preview.extend(batch.slice(0, preview_rows - len(preview)).to_pylist())
                rows += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InvalidDataset(f"not a valid Parquet file: {str(exc).strip()}") from exc
    if rows != declared:
        raise InvalidDataset(f"corrupt Parquet file: the footer declares {declared} rows, the pages hold {rows}")
    columns = [{"name": f.name, "type": str(f.type)} for f in schema]
    return DatasetInfo("parquet", rows, columns, _jsonable_rows(preview))


def _inspect_csv(path: Path, preview_rows: int, deadline: _Deadline) -> DatasetInfo:
    # pyarrow infers types from the first block; a later value that does not fit widens that column and
    # the pass starts again (integers to double, anything else to string): at most two retries per column.
    column_types: dict[str, pa.DataType] = {}
    while True:
        try:
            return _read_csv(path, preview_rows, column_types, deadline)
        except _WidenColumn as widen:
            column_types[widen.name] = widen.to


class _WidenColumn(Exception):
    def __init__(self, name: str, to: pa.DataType) -> None:
        self.name, self.to = name, to


def _open_csv(path: Path, column_types: dict[str, pa.DataType]) -> pacsv.CSVStreamingReader:
    return pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=column_types),
    )


def _read_csv(path: Path, preview_rows: int, column_types: dict[str, pa.DataType], deadline: _Deadline) -> DatasetInfo:
    names: list[str] = []
    try:
        with _open_csv(path, column_types) as reader:
            names = reader.schema.names
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise InvalidDataset(f"CSV header repeats column name(s): {', '.join(duplicates)}")
            rows = 0
            preview: list[dict[str, Any]] = []
            for batch in reader:
                deadline.check()
                if len(preview) < preview_rows:
                    preview.extend(batch.slice(0, preview_rows - len(preview)).to_pylist())
                rows += batch.num_rows
            schema = reader.schema
    except pa.ArrowInvalid as exc:
        message = str(exc).strip()
        match = _CONVERSION_ERROR.search(message)
        if match and int(match.group(1)) < len(names):
            name = names[int(match.group(1))]
            current = column_types.get(name)
            if current is None and match.group(2).startswith(("int", "uint")):
                raise _WidenColumn(name, pa.float64()) from exc
            if current is None or current != pa.string():
                raise _WidenColumn(name, pa.string()) from exc
        raise InvalidDataset(f"not a valid CSV file: {message.removeprefix('CSV parse error: ')}") from exc
    except pa.ArrowException as exc:
        raise InvalidDataset(f"not a valid CSV file: {str(exc).strip()}") from exc
    columns = [{"name": f.name, "type": str(f.type)} for f in schema]
    return DatasetInfo("csv", rows, columns, _jsonable_rows(preview))


def _inspect_jsonl(path: Path, preview_rows: int, deadline: _Deadline) -> DatasetInfo:
    kinds: dict[str, set[str]] = {}
    rows = 0
    preview: list[dict[str, Any]] = []
    for value in _json_lines(path):
        rows += 1
        if rows % 4096 == 0:
            deadline.check()
        for key, item in value.items():
            kinds.setdefault(key, set()).add(_json_kind(item))
        if len(preview) < preview_rows:
            preview.append(value)
    if rows == 0:
        raise InvalidDataset("no JSON objects in the file")
    columns = [{"name": name, "type": _arrow_type_name(k)} for name, k in kinds.items()]
    return DatasetInfo("jsonl", rows, columns, _jsonable_rows(preview))


def _json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """Each non-blank line's object; the one parser of JSON lines, for inspection and for reading alike."""
    with path.open("rb") as fh:
        lineno = 0
        while True:
            line = fh.readline(_MAX_LINE_BYTES + 1)
            if not line:
                return
            lineno += 1
            if len(line) > _MAX_LINE_BYTES:
                raise InvalidDataset(f"line {lineno} is longer than {_MAX_LINE_BYTES >> 20} MiB")
            if lineno == 1:
                line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                try:
                    value = json.loads(line)  # orjson refuses a few things json accepts (NaN, Infinity)
                except ValueError as exc:
                    raise InvalidDataset(f"line {lineno} is not valid JSON: {exc}") from exc
            if not isinstance(value, dict):
                raise InvalidDataset(f"line {lineno} is not a JSON object (it is {_json_kind(value)})")
            yield value


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


_ARROW_NAMES = {
    "a boolean": "bool",
    "an integer": "int64",
    "a number": "double",
    "a string": "string",
    "an array": "list",
    "an object": "struct",
}


def _arrow_type_name(kinds: set[str]) -> str:
    # Arrow's names, as CSV and Parquet columns get them; nulls make a column nullable, not another type.
    kinds = kinds - {"null"}
    if not kinds:
        return "null"
    if kinds == {"an integer", "a number"}:
        return "double"
    if len(kinds) == 1:
        return _ARROW_NAMES[next(iter(kinds))]
    return "mixed"


def _jsonable_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{str(k): _jsonable(v) for k, v in row.items()} for row in rows]


def _jsonable(value: Any) -> Any:
    """A preview value as JSON can hold it (and PostgreSQL's JSON type accepts: no NaN)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= _MAX_PREVIEW_TEXT else value[:_MAX_PREVIEW_TEXT] + "…"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return _jsonable(base64.b64encode(value).decode())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value[:100]]
    return _jsonable(str(value))


# --- reading in chunks -------------------------------------------------------------------------------------


def _arrow_type(name: str) -> pa.DataType | None:
    try:
        return pa.type_for_alias(name)
    except (ValueError, KeyError):
        return None


def _jsonl_batches(path: Path, columns: Sequence[dict[str, Any]], size: int) -> Iterator[pa.RecordBatch]:
    # The column types inspection found, so every chunk has one schema (a first chunk of whole numbers and a
    # later one with fractions are both double); mixed or nested columns carry their values as JSON text.
    names = [str(c["name"]) for c in columns]
    types = {str(c["name"]): _arrow_type(str(c.get("type"))) for c in columns}
    as_text = {n for n, t in types.items() if t is None or pa.types.is_null(t)}
    schema = pa.schema([(n, pa.string() if n in as_text else types[n]) for n in names])

    def cell(name: str, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None  # NaN and ±Infinity are missing values, as CSV's "NaN" is
        if name in as_text and value is not None and not isinstance(value, str):
            return orjson.dumps(value).decode()
        return value

    rows: list[dict[str, Any]] = []
    for value in _json_lines(path):
        rows.append({n: cell(n, value.get(n)) for n in names})
        if len(rows) >= size:
            yield pa.RecordBatch.from_pylist(rows, schema=schema)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=schema)


def read_batches(path: Path, fmt: str, columns: Sequence[dict[str, Any]], size: int) -> Iterator[pa.RecordBatch]:
    """The file's rows in record batches of at most about `size` rows, typed as inspection saw them."""
    if fmt == "parquet":
        with pq.ParquetFile(path) as parquet:
            yield from parquet.iter_batches(batch_size=size)  # one row group at a time
    elif fmt == "csv":
        types = {c["name"]: t for c in columns if (t := _arrow_type(str(c.get("type")))) is not None}
        with _open_csv(path, types) as reader:
            yield from reader
    elif fmt == "jsonl":
        yield from _jsonl_batches(path, columns, size)
    else:
        raise InvalidDataset(f"unsupported format {fmt!r} (one of {', '.join(FORMATS)})", "format")


def iter_chunks(
    path: Path, fmt: str, columns: Sequence[dict[str, Any]], chunk_size: int, skip: int = 0
) -> Iterator[pa.Table]:
    """Tables of exactly `chunk_size` rows (the last may be shorter), after skipping `skip` rows."""
    pending: list[pa.RecordBatch] = []
    buffered = 0
    for batch in read_batches(path, fmt, columns, chunk_size):
        if skip:
            dropped = min(skip, batch.num_rows)
            batch, skip = batch.slice(dropped), skip - dropped
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        buffered += batch.num_rows
        while buffered >= chunk_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_size)
            rest = table.slice(chunk_size)
            pending, buffered = rest.to_batches(), rest.num_rows
    if buffered:
        yield pa.Table.from_batches(pending)


# --- writing -----------------------------------------------------------------------------------------------


def write_table(table: pa.Table, path: Path, fmt: str, *, header: bool = True) -> None:
    """One file (or one part of a file, `header=False` for CSV parts after the first) in `fmt`."""
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(include_header=header))
    elif fmt == "jsonl":
        with path.open("wb") as sink:
            for batch in table.to_batches(max_chunksize=10_000):
                for row in batch.to_pylist():
                    sink.write(orjson.dumps(row, default=_jsonable, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    else:
        raise InvalidDataset(f"unsupported format {fmt!r} (one of {', '.join(FORMATS)})", "output_format")


def output_schema(parts: Sequence[Path]) -> pa.Schema:
    """One schema for all Parquet parts: a column all-null in one part takes its type from the others."""
    schemas = [pq.read_schema(p) for p in parts]
    return pa.unify_schemas(schemas, promote_options="permissive")


def concatenate(parts: Sequence[Path], out: Path, fmt: str) -> Path:
    """Join part files into `out`: Parquet parts rewritten under one fixed schema, text parts byte for byte."""
    if fmt == "parquet":
        schema = output_schema(parts)
        with pq.ParquetWriter(out, schema) as writer:
            for part in parts:
                table = pq.read_table(part)
                if table.schema != schema:
                    table = table.select(schema.names).cast(schema)
                writer.write_table(table)
    else:
        with out.open("wb") as sink:
            for part in parts:
                with part.open("rb") as source:
                    shutil.copyfileobj(source, sink, 1 << 20)
    return out
