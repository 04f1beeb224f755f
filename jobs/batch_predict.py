"""Scores a dataset in chunks: stream the input, one engine call per chunk, one output part file per chunk.

Memory stays bounded whatever the input size: at most one chunk (plus one reader block) is in memory. Part `i`
holds the predictions of chunk `i`; the checkpoint after each chunk is (rows done, parts written), so a resumed
run deletes any part past the checkpoint (written by a worker that died before reporting it), skips the rows
done and carries on. The parts are concatenated once at the end: every input row appears exactly once.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from inference.runtimes import load_runtime
from inference.runtimes.base import ModelDescription, Runtime
from inference.validation import validate_records
from shared.artifacts import LocalArtifactStore
from shared.errors import ModelServeError
from shared.settings import Settings

log = logging.getLogger(__name__)
_ENGINE_BY_IMPLEMENTATION = {"jpmml-evaluator": "jpmml", "pypmml": "pypmml"}
_CSV_BLOCK_BYTES = 1 << 20
_RUNTIMES: OrderedDict[str, Runtime] = OrderedDict()
_MAX_RUNTIMES = 2
_ROW_IN_CHUNK = re.compile(r"inputs\[(\d+)\]\.?")


class ChunkFailed(Exception):
    """A chunk could not be scored; the message is the reason the run shows."""


@dataclass
class RunContext:
    """What the scoring loop needs from its surroundings (the registry, the clock, the log)."""

    settings: Settings
    workdir: Path
    report: Callable[[int, dict[str, Any]], str]
    """(rows done, checkpoint) -> `continue`, `pause` or `stop`."""
    log: Callable[[str], None]
    deadline: float
    sleep: Callable[[float], None] = time.sleep


@dataclass
class Outcome:
    status: str
    rows_done: int
    checkpoint: dict[str, Any]
    error: str | None = None
    output: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- reading the input -------------------------------------------------------------------------------------


def _arrow_type(name: str) -> pa.DataType | None:
    try:
        return pa.type_for_alias(name)
    except (ValueError, KeyError):
        return None


def _record_batches(path: Path, fmt: str, columns: list[dict[str, Any]], chunk_size: int) -> Iterator[pa.RecordBatch]:
    if fmt == "parquet":
        with pq.ParquetFile(path) as parquet:
            yield from parquet.iter_batches(batch_size=chunk_size)
    elif fmt == "csv":
        # The types inspection settled on (it may have widened a column), so every block parses the same way.
        types = {c["name"]: t for c in columns if (t := _arrow_type(str(c.get("type")))) is not None}
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
        with reader:
            yield from reader
    elif fmt == "jsonl":
        rows: list[dict[str, Any]] = []
        with path.open("rb") as fh:
            for line in fh:
                if line.strip():
                    rows.append(orjson.loads(line))
                if len(rows) >= chunk_size:
                    yield pa.RecordBatch.from_pylist(rows)
                    rows = []
        if rows:
            yield pa.RecordBatch.from_pylist(rows)
    else:
        raise ChunkFailed(f"unsupported input format {fmt!r}")


def iter_chunks(
    path: Path, fmt: str, columns: list[dict[str, Any]], chunk_size: int, skip: int = 0
) -> Iterator[pa.Table]:
    """Tables of exactly `chunk_size` rows (the last may be shorter), after skipping `skip` rows."""
    pending: list[pa.RecordBatch] = []
    buffered = 0
    for batch in _record_batches(path, fmt, columns, chunk_size):
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


# --- scoring one chunk -------------------------------------------------------------------------------------


def model_columns(description: ModelDescription, columns: list[str], mapping: dict[str, Any] | None) -> dict[str, Any]:
    """Model input -> column (or list of columns for a tensor input); same-named columns unless mapped."""
    chosen: dict[str, Any] = {}
    inputs = {spec.name: spec for spec in description.inputs}
    for name, source in (mapping or {}).items():
        if name not in inputs:
            raise ChunkFailed(f"input_mapping names {name!r}, which is not an input of the model ({', '.join(inputs)})")
        chosen[name] = source
    for name, spec in inputs.items():
        if name in chosen:
            continue
        if name in columns:
            chosen[name] = name
        elif spec.required:
            raise ChunkFailed(f"no column for the model input {name!r}: add it to params.input_mapping")
    return chosen


def _records(table: pa.Table, chosen: dict[str, Any]) -> list[dict[str, Any]]:
    values: dict[str, list[Any]] = {}
    for name, source in chosen.items():
        if isinstance(source, str):
            values[name] = table.column(source).to_pylist()
        else:
            values[name] = [list(row) for row in zip(*(table.column(c).to_pylist() for c in source), strict=True)]
    names = list(values)
    return [dict(zip(names, row, strict=True)) for row in zip(*values.values(), strict=True)]


def prediction_columns(description: ModelDescription, predictions: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Normalised answers as flat columns: `label`, `probability_<class>`, `value`, `cluster`, `component_<i>`."""
    first = predictions[0] if predictions else {}
    out: dict[str, list[Any]] = {}
    if "label" in first:
        out["label"] = [p.get("label") for p in predictions]
    if isinstance(first.get("probabilities"), dict):
        classes = description.class_labels or list(first["probabilities"])
        for cls in classes:  # answers key their probabilities by the class as a string
            key = str(cls)
            out[f"probability_{cls}"] = [(p.get("probabilities") or {}).get(key) for p in predictions]
    for key in ("value", "cluster"):
        if key in first:
            out[key] = [p.get(key) for p in predictions]
    if isinstance(first.get("components"), list):
        for i in range(len(first["components"])):
            out[f"component_{i}"] = [(p.get("components") or [None] * (i + 1))[i] for p in predictions]
    if not out:
        out["raw"] = [orjson.dumps(p.get("raw", p), option=orjson.OPT_SERIALIZE_NUMPY).decode() for p in predictions]
    return out


def _numeric_columns(table: pa.Table, chosen: dict[str, Any]) -> dict[str, list[np.ndarray]] | None:
    """Each model input's source column(s) as numpy arrays, when all are numbers with no missing value."""
    inputs: dict[str, list[np.ndarray]] = {}
    for name, source in chosen.items():
        arrays = []
        for column_name in [source] if isinstance(source, str) else source:
            column = table.column(column_name)
            if column.null_count or not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
                return None
            arrays.append(column.to_numpy())
        inputs[name] = arrays
    return inputs


def score_chunk(runtime: Runtime, table: pa.Table, chosen: dict[str, Any], *, columnar: bool = True) -> pa.Table:
    """The chunk's input columns plus its prediction columns, from one engine call.

    Runtimes that can (ONNX with numeric tensor inputs) take the columns as arrays and answer in columns;
    otherwise, or when a column holds something else than numbers, the chunk goes record by record through
    validation (which names the offending row and field) and `predict`. Both give the same table.
    """
    columns: dict[str, Any] | None = None
    predict_columns = getattr(runtime, "predict_columns", None)
    if columnar and predict_columns is not None and (inputs := _numeric_columns(table, chosen)) is not None:
        columns = predict_columns(inputs)
    if columns is None:
        clean, _warnings = validate_records(runtime.description, _records(table, chosen))
        columns = prediction_columns(runtime.description, runtime.predict(clean))
    for name, column in columns.items():
        target = name if name not in table.column_names else f"prediction_{name}"
        table = table.append_column(target, pa.array(column))
    return table


def load_model(settings: Settings, model: dict[str, Any]) -> Runtime:
    """The model version's runtime, kept loaded between runs (the worker does not fork)."""
    description = ModelDescription.model_validate(model["description"])
    engine = _ENGINE_BY_IMPLEMENTATION.get(description.engine.implementation or "")
    key = f"{model['sha256']}:{engine}:{description.function_type}"
    runtime = _RUNTIMES.get(key)
    if runtime is None:
        path = LocalArtifactStore(settings.artifacts_dir).local_path(model["sha256"])
        runtime = load_runtime(path, settings, function_type=description.function_type, engine=engine)
        _RUNTIMES[key] = runtime
        while len(_RUNTIMES) > _MAX_RUNTIMES:
            _RUNTIMES.popitem(last=False)[1].unload()
    _RUNTIMES.move_to_end(key)
    return runtime


# --- writing the output ------------------------------------------------------------------------------------


def _part(workdir: Path, index: int, fmt: str) -> Path:
    return workdir / f"part-{index:06d}.{fmt}"


def write_part(table: pa.Table, workdir: Path, index: int, fmt: str) -> None:
    tmp = workdir / f".part-{index:06d}.tmp"
    if fmt == "parquet":
        pq.write_table(table, tmp)
    else:
        pacsv.write_csv(table, tmp, write_options=pacsv.WriteOptions(include_header=index == 0))
    tmp.replace(_part(workdir, index, fmt))  # a part exists whole or not at all


def drop_parts_after(workdir: Path, parts: int) -> None:
    """Forget parts a dead worker wrote past its last checkpoint."""
    for path in workdir.glob("part-*"):
        if int(path.stem.split("-")[1]) >= parts:
            path.unlink()
    for path in workdir.glob(".part-*"):
        path.unlink()


def concatenate(workdir: Path, parts: int, fmt: str) -> Path:
    out = workdir / f"output.{fmt}"
    if fmt == "parquet":
        writer: pq.ParquetWriter | None = None
        try:
            for i in range(parts):
                table = pq.read_table(_part(workdir, i, fmt))
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema)
                writer.write_table(table.cast(writer.schema_arrow) if table.schema != writer.schema_arrow else table)
        finally:
            if writer is not None:
                writer.close()
    else:
        with out.open("wb") as sink:
            for i in range(parts):
                with _part(workdir, i, fmt).open("rb") as part:
                    shutil.copyfileobj(part, sink, 1 << 20)
    return out


# --- the run -----------------------------------------------------------------------------------------------


def run_batch_predict(spec: dict[str, Any], ctx: RunContext) -> Outcome:
    """Score from the checkpoint on; pause/stop at chunk boundaries; retry a failing chunk, then fail."""
    params, job = spec["job"]["params"], spec["job"]
    checkpoint: dict[str, Any] = dict(spec["run"]["checkpoint"])
    rows_done, parts = int(checkpoint.get("rows_done", 0)), int(checkpoint.get("parts", 0))
    fmt, chunk_size = params.get("output_format", "csv"), int(params.get("chunk_size", 10_000))
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    drop_parts_after(ctx.workdir, parts)
    if checkpoint.get("phase") != "registering":
        if rows_done:
            ctx.log(f"resuming at row {rows_done} (part {parts})")
        runtime = load_model(ctx.settings, spec["model"])
        source = spec["input"]
        path = LocalArtifactStore(ctx.settings.datasets_dir).local_path(source["sha256"])
        chosen = model_columns(runtime.description, [c["name"] for c in source["columns"]],
                               params.get("input_mapping"))  # fmt: skip
        next_report = 0.0  # the first chunk reports at once
        for table in iter_chunks(path, source["format"], source["columns"], chunk_size, skip=rows_done):
            try:
                scored = _with_retries(runtime, table, chosen, job, rows_done, ctx)
            except ChunkFailed as exc:
                return Outcome("failed", rows_done, checkpoint, error=str(exc))
            write_part(scored, ctx.workdir, parts, fmt)
            rows_done, parts = rows_done + table.num_rows, parts + 1
            checkpoint.update(rows_done=rows_done, parts=parts)
            # Each report is a registry write: one per interval, not per chunk. A resume starts from the last
            # one reported (parts written after it are dropped), and pause/stop take effect at the next one.
            if time.monotonic() > ctx.deadline:
                error = f"timed out after {job['timeout_seconds']:g} s ({rows_done} rows done)"
                return Outcome("failed", rows_done, checkpoint, error=error)
            if time.monotonic() < next_report:
                continue
            next_report = time.monotonic() + ctx.settings.batch_progress_interval_seconds
            control = ctx.report(rows_done, checkpoint)
            if control in ("pause", "stop"):
                ctx.log(f"{'paused' if control == 'pause' else 'stopped'} after row {rows_done}")
                return Outcome("paused" if control == "pause" else "stopped", rows_done, checkpoint)
        if parts == 0:
            return Outcome("failed", 0, checkpoint, error="the input dataset has no rows")
        checkpoint["phase"] = "registering"
        ctx.report(rows_done, checkpoint)
    output = concatenate(ctx.workdir, parts, fmt)
    return Outcome("succeeded", rows_done, checkpoint, output=output)


def _with_retries(
    runtime: Runtime, table: pa.Table, chosen: dict[str, Any], job: dict[str, Any], start: int, ctx: RunContext
) -> pa.Table:
    tries = int(job.get("retries", 0)) + 1
    for attempt in range(1, tries + 1):
        try:
            return score_chunk(runtime, table, chosen)
        except Exception as exc:
            # Name the input row, not the row within the chunk.
            reason = _ROW_IN_CHUNK.sub(lambda m: f"row {start + int(m.group(1))} ", _reason(exc))
            ctx.log(f"chunk at row {start} failed (try {attempt}/{tries}): {reason}")
            if attempt == tries:
                raise ChunkFailed(f"chunk at row {start} failed after {tries} tries: {reason}") from exc
            ctx.sleep(float(job.get("retry_delay_seconds", 0)))
    raise AssertionError("unreachable")


def _reason(exc: Exception) -> str:
    if isinstance(exc, ModelServeError) and exc.errors:
        shown = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in exc.errors[:3])
        return f"{exc.detail} ({shown})"[:2000]
    return f"{type(exc).__name__}: {exc}"[:2000]
