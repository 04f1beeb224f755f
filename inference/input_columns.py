"""Which table columns feed which model input: the mapping batch jobs and CSV predict/test share.

Each input takes the column named after it, unless the mapping says otherwise (a column name, or a list of
column names in order for a tensor input). A model with one `[N, k]` tensor input that no column is named
after (skl2onnx's `X`) takes the remaining columns in their order, `k` of them where the graph fixes `k`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inference.runtimes.base import FieldSpec, ModelDescription
from shared.errors import ValidationFailed, field_error

ColumnSource = str | list[str]


def _is_row_tensor(spec: FieldSpec) -> bool:
    return "(" not in spec.data_type and spec.shape is not None and len(spec.shape) == 2


def input_columns(
    description: ModelDescription, columns: list[str], mapping: Mapping[str, Any] | None = None
) -> dict[str, ColumnSource]:
    """Model input -> its column, or its columns in order for a tensor input (inputs without a column are
    left out). Raises `ValidationFailed` naming `input_mapping.<input>` for a mapping that does not fit, and
    `columns` when a tensor input's fixed width differs from the columns left for it."""
    inputs = {spec.name: spec for spec in description.inputs}
    chosen: dict[str, ColumnSource] = {}
    errors: list[dict[str, Any]] = []
    for name, source in (mapping or {}).items():
        if name not in inputs:
            errors.append(field_error(f"input_mapping.{name}", "not an input of the model", expected=list(inputs)))
            continue
        wanted = [source] if isinstance(source, str) else source
        if not isinstance(wanted, list) or not wanted or not all(isinstance(c, str) for c in wanted):
            errors.append(field_error(f"input_mapping.{name}", "expected a column name or a list of them"))
            continue
        unknown = [c for c in wanted if c not in columns]
        if unknown:
            errors.append(field_error(f"input_mapping.{name}", "no such column", expected=columns, received=unknown))
            continue
        chosen[name] = source
    unmatched = [name for name in inputs if name not in chosen and name not in columns]
    for name in inputs:
        if name not in chosen and name in columns:
            chosen[name] = name
    tensors = [name for name in unmatched if _is_row_tensor(inputs[name])]
    if len(tensors) == 1 and len(unmatched) == 1:
        name = tensors[0]
        used = {c for source in chosen.values() for c in ([source] if isinstance(source, str) else source)}
        rest = [c for c in columns if c not in used]
        shape = inputs[name].shape
        assert shape is not None
        width = shape[1]
        if isinstance(width, int) and width != len(rest):
            errors.append(
                field_error(
                    "columns",
                    f"the model input {name!r} takes {width} columns in order; {len(rest)} are left for it",
                    expected=width,
                    received=rest,
                )
            )
        else:
            chosen[name] = rest
    # Other inputs without a column are left to validation, which names each record's missing field.
    if errors:
        raise ValidationFailed("The columns do not fit the model's inputs", errors=errors)
    return chosen


def records_from_rows(
    columns: list[str], rows: list[list[Any]], chosen: Mapping[str, ColumnSource]
) -> list[dict[str, Any]]:
    """Records from table rows: each column under its name, except those a tensor input gathers (in order)."""
    gathered = {name: source for name, source in chosen.items() if not isinstance(source, str)}
    consumed = {c for source in gathered.values() for c in source}
    index = {c: i for i, c in enumerate(columns)}
    keep = [(c, i) for c, i in index.items() if c not in consumed]
    plans = [(name, [index[c] for c in source]) for name, source in gathered.items()]
    records = []
    for row in rows:
        record = {c: row[i] for c, i in keep if row[i] is not None}
        for name, positions in plans:
            record[name] = [row[i] for i in positions]
        records.append(record)
    return records
