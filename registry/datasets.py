"""Datasets: sniff and check tabular files (CSV, JSON lines, Parquet), and keep them by content (no HTTP in here).

Inspection streams every file once, whatever its size: rows are counted and types inferred batch by batch, and
only the first rows are kept (as the preview).
"""

from __future__ import annotations

import base64
import codecs
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from registry.catalog import check_name
from registry.schemas import Page
from registry.tables import Dataset, DatasetDetail, DatasetPublic, utcnow
from shared.artifacts import ArtifactStore, StagedArtifact
from shared.errors import Conflict, NotFound, ValidationFailed, field_error

log = logging.getLogger(__name__)

DatasetUsageCheck = Callable[[Session, Dataset], list[str]]
"""Names of the batch jobs (or runs) that use a dataset; a used dataset cannot be deleted."""

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


@dataclass
class DatasetInfo:
    """What inspecting a file found."""

    format: str
    rows: int
    columns: list[dict[str, str]]
    preview: list[dict[str, Any]] = field(default_factory=list)


# --- inspection --------------------------------------------------------------------------------------------


def inspect_dataset(path: Path, preview_rows: int = 20) -> DatasetInfo:
    """Sniff the format from the content, check the whole file, count its rows and infer its columns."""
    if path.stat().st_size == 0:
        raise InvalidDataset("the file is empty")
    with path.open("rb") as fh:
        head = fh.read(_PREFIX_BYTES)
    if head.startswith(_PARQUET_MAGIC):
        return _inspect_parquet(path, preview_rows)
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
        return _inspect_jsonl(path, preview_rows)
    if start == "[":
        raise InvalidDataset("a JSON array is not JSON lines: write one JSON object per line")
    return _inspect_csv(path, preview_rows)


def _inspect_parquet(path: Path, preview_rows: int) -> DatasetInfo:
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
                if len(preview) < preview_rows:
                    preview.extend(batch.slice(0, preview_rows - len(preview)).to_pylist())
                rows += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InvalidDataset(f"not a valid Parquet file: {str(exc).strip()}") from exc
    if rows != declared:
        raise InvalidDataset(f"corrupt Parquet file: the footer declares {declared} rows, the pages hold {rows}")
    columns = [{"name": f.name, "type": str(f.type)} for f in schema]
    return DatasetInfo("parquet", rows, columns, _jsonable_rows(preview))


def _inspect_csv(path: Path, preview_rows: int) -> DatasetInfo:
    # pyarrow infers types from the first block; a later value that does not fit widens that column and
    # the pass starts again (integers to double, anything else to string): at most two retries per column.
    column_types: dict[str, pa.DataType] = {}
    while True:
        try:
            return _read_csv(path, preview_rows, column_types)
        except _WidenColumn as widen:
            column_types[widen.name] = widen.to


class _WidenColumn(Exception):
    def __init__(self, name: str, to: pa.DataType) -> None:
        self.name, self.to = name, to


def _read_csv(path: Path, preview_rows: int, column_types: dict[str, pa.DataType]) -> DatasetInfo:
    names: list[str] = []
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=column_types),
        )
        with reader:
            names = reader.schema.names
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise InvalidDataset(f"CSV header repeats column name(s): {', '.join(duplicates)}")
            rows = 0
            preview: list[dict[str, Any]] = []
            for batch in reader:
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


def _inspect_jsonl(path: Path, preview_rows: int) -> DatasetInfo:
    kinds: dict[str, set[str]] = {}
    rows = 0
    preview: list[dict[str, Any]] = []
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:
                value = json.loads(line)  # orjson refuses a few things json accepts (e.g. NaN)
            except ValueError as exc:
                raise InvalidDataset(f"line {lineno} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise InvalidDataset(f"line {lineno} is not a JSON object (it is {_json_kind(value)})")
        rows += 1
        for key, item in value.items():
            kinds.setdefault(key, set()).add(_json_kind(item))
        if len(preview) < preview_rows:
            preview.append(value)
    if rows == 0:
        raise InvalidDataset("no JSON objects in the file")
    columns = [{"name": name, "type": _arrow_type_name(k)} for name, k in kinds.items()]
    return DatasetInfo("jsonl", rows, columns, _jsonable_rows(preview))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        lineno = 0
        while True:
            line = fh.readline(_MAX_LINE_BYTES + 1)
            if not line:
                return
            lineno += 1
            if len(line) > _MAX_LINE_BYTES:
                raise InvalidDataset(f"line {lineno} is longer than {_MAX_LINE_BYTES >> 20} MiB")
            yield lineno, line.removeprefix(_BOM) if lineno == 1 else line


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


def stage_file(store: ArtifactStore, path: Path, max_bytes: int) -> StagedArtifact:
    """Copy a local file into the store's staging (hashing it on the way); the caller commits or discards it."""
    writer = store.writer(max_bytes)
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


# --- the catalog -------------------------------------------------------------------------------------------


class DatasetCatalog:
    """Datasets in one database session, their files in one content-addressed store."""

    def __init__(self, session: Session, store: ArtifactStore, usage: DatasetUsageCheck | None = None) -> None:
        self.session = session
        self.store = store
        self.usage = usage or (lambda _s, _d: [])

    def get(self, name: str) -> Dataset:
        row = self.session.exec(select(Dataset).where(Dataset.name == name)).first()
        if row is None:
            raise NotFound(f"Dataset '{name}' does not exist")
        return row

    def exists(self, name: str) -> bool:
        return self.session.exec(select(Dataset.id).where(Dataset.name == name)).first() is not None

    def ensure_absent(self, name: str) -> None:
        if self.exists(name):
            raise Conflict(f"Dataset '{name}' already exists")

    @staticmethod
    def public(row: Dataset) -> DatasetPublic:
        return DatasetPublic.model_validate(row, from_attributes=True)

    @staticmethod
    def detail(row: Dataset) -> DatasetDetail:
        return DatasetDetail.model_validate(row, from_attributes=True)

    def list(self, limit: int, offset: int) -> Page[DatasetPublic]:
        total = self.session.exec(select(func.count()).select_from(Dataset)).one()
        rows = self.session.exec(select(Dataset).order_by(col(Dataset.name)).offset(offset).limit(limit)).all()
        return Page(items=[self.public(r) for r in rows], total=total, limit=limit, offset=offset)

    def ready_path(self, row: Dataset) -> Path:
        """The stored file of a ready dataset."""
        if row.status != "ready" or row.sha256 is None:
            raise Conflict(f"Dataset '{row.name}' is not ready (status {row.status})", status_of=row.status)
        return self.store.local_path(row.sha256)

    # --- writing -----------------------------------------------------------------------------------------

    def add(
        self, name: str, staged: StagedArtifact, info: DatasetInfo, *, source: str, description: str = "",
        source_url: str | None = None,
    ) -> Dataset:  # fmt: skip
        """Store an inspected file as a new ready dataset."""
        check_name(name)
        self.store.commit(staged)
        row = Dataset(name=name, description=description, source=source, source_url=source_url)
        self._fill(row, staged, info)
        self.session.add(row)
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            self._forget_file(staged.sha256)
            raise Conflict(f"Dataset '{name}' already exists") from None
        self.session.refresh(row)
        log.info("dataset stored", extra={"dataset": name, "format": info.format, "rows": info.rows})
        return row

    def register_job_output(self, name: str, path: Path, *, max_bytes: int, description: str = "",
                            preview_rows: int = 20) -> Dataset:  # fmt: skip
        """Register a file a batch job wrote as a new dataset (source `job`); the file itself is left in place."""
        check_name(name)
        self.ensure_absent(name)
        staged = stage_file(self.store, path, max_bytes)
        try:
            info = inspect_dataset(staged.path, preview_rows)
            return self.add(name, staged, info, source="job", description=description)
        finally:
            self.store.discard(staged)  # no-op once committed

    def create_remote(self, name: str, source_url: str, description: str = "") -> Dataset:
        """A dataset to be fetched by a worker: status `fetching` until its content arrives."""
        check_name(name)
        row = Dataset(name=name, description=description, source="remote", source_url=source_url,
                      status="fetching")  # fmt: skip
        self.session.add(row)
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise Conflict(f"Dataset '{name}' already exists") from None
        self.session.refresh(row)
        return row

    def fetching(self, name: str, source_url: str | None = None) -> Dataset:
        """The dataset a fetch worker reports on; 409 when it is no longer waiting for that URL."""
        row = self.get(name)
        if row.status != "fetching":
            raise Conflict(f"Dataset '{name}' is not being fetched (status {row.status})")
        if source_url is not None and row.source_url != source_url:
            raise Conflict(f"Dataset '{name}' is being fetched from another URL")
        return row

    def complete_fetch(self, name: str, staged: StagedArtifact, info: DatasetInfo,
                       source_url: str | None = None) -> Dataset:  # fmt: skip
        row = self.fetching(name, source_url)
        self.store.commit(staged)
        self._fill(row, staged, info)
        row.status, row.status_reason = "ready", None
        self.session.add(row)
        self.session.commit()
        self.session.refresh(row)
        log.info("remote dataset ready", extra={"dataset": name, "format": info.format, "rows": info.rows})
        return row

    def fail_fetch(self, name: str, reason: str, source_url: str | None = None) -> Dataset:
        row = self.fetching(name, source_url)
        row.status, row.status_reason, row.updated_at = "failed", reason[:4000], utcnow()
        self.session.add(row)
        self.session.commit()
        self.session.refresh(row)
        log.warning("remote dataset failed", extra={"dataset": name, "reason": row.status_reason})
        return row

    def delete(self, name: str) -> None:
        row = self.get(name)
        users = self.usage(self.session, row)
        if users:
            raise Conflict(f"Dataset '{name}' is used by job(s): {', '.join(users)}", jobs=users)
        sha = row.sha256
        self.session.delete(row)
        self.session.commit()
        if sha is not None:
            self._forget_file(sha)

    @staticmethod
    def _fill(row: Dataset, staged: StagedArtifact, info: DatasetInfo) -> None:
        row.format, row.sha256, row.size_bytes = info.format, staged.sha256, staged.size_bytes
        row.rows, row.columns, row.preview = info.rows, info.columns, info.preview
        row.updated_at = utcnow()

    def _forget_file(self, sha256: str) -> None:
        # Content-addressed: another dataset may hold the same bytes.
        still_used = self.session.exec(select(Dataset.id).where(Dataset.sha256 == sha256)).first()
        if still_used is None:
            self.store.delete(sha256)
