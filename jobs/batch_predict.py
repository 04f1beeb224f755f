"""Scores a dataset in chunks: stream the input, one engine call per chunk, one output part file per chunk.

Memory stays bounded whatever the input size: at most one chunk (plus one reader block) is in memory. Part `i`
holds the predictions of chunk `i`; the checkpoint after each chunk is (rows done, parts written), so a resumed
run deletes any part past the checkpoint (written by a worker that died before reporting it), skips the rows
done and carries on. The parts are concatenated once at the end: every input row appears exactly once.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from inference.runtimes import load_runtime
from inference.runtimes.base import ModelDescription, Runtime
from inference.validation import validate_records
from shared.artifacts import LocalArtifactStore
from shared.errors import ModelServeError
from shared.settings import Settings
from shared.tabular import InvalidDataset, concatenate, iter_chunks, write_table

log = logging.getLogger(__name__)
_ENGINE_BY_IMPLEMENTATION = {"jpmml-evaluator": "jpmml", "pypmml": "pypmml"}
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
    write_table(table, tmp, fmt, header=index == 0)
    tmp.replace(_part(workdir, index, fmt))  # a part exists whole or not at all


def drop_parts_after(workdir: Path, parts: int) -> None:
    """Forget parts a dead worker wrote past its last checkpoint."""
    for path in workdir.glob("part-*"):
        if int(path.stem.split("-")[1]) >= parts:
            path.unlink()
    for path in workdir.glob(".part-*"):
        path.unlink()


def concatenate_parts(workdir: Path, parts: int, fmt: str) -> Path:
    return concatenate([_part(workdir, i, fmt) for i in range(parts)], workdir / f"output.{fmt}", fmt)


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
        chunks = iter_chunks(path, source["format"], source["columns"], chunk_size, skip=rows_done)
        while True:
            try:
                table = next(chunks, None)
                if table is None:
                    break
                scored = _with_retries(runtime, table, chosen, job, rows_done, ctx)
            except InvalidDataset as exc:  # a row the reader refuses: bad data, no retry makes it good
                return Outcome("failed", rows_done, checkpoint, error=f"after row {rows_done}: {exc.reason}")
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
    output = concatenate_parts(ctx.workdir, parts, fmt)
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
