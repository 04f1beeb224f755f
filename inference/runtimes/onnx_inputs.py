"""ONNX feeds: the tensors one `session.run` takes, built from validated records or from numeric columns.

Two ways a graph takes records (`ModelDescription.batched`): a graph whose inputs share a leading dynamic
dimension takes a batch, each record one row of every input (stacked here); any other graph is served as
it is, each record holding whole tensors of the shapes the graph declares.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from inference.runtimes.base import FieldSpec
from shared.errors import ValidationFailed, field_error

FAST_INPUT_ROWS = 64
"""From this many records, a float [N, k] input is filled with `np.fromiter` (≈2× faster than `np.asarray`)."""


def numpy_dtype(data_type: str) -> np.dtype[Any]:
    """numpy dtype of an ONNX element type name (`string` -> object, as onnxruntime wants)."""
    if data_type == "string":
        return np.dtype(object)
    return np.dtype(helper.tensor_dtype_to_np_dtype(getattr(TensorProto, data_type.upper())))


def non_tensor(spec: FieldSpec) -> bool:
    """Sequence and map inputs (DictVectorizer's) go to onnxruntime as they are."""
    return spec.data_type.startswith(("seq(", "map("))


def input_error(i: int, spec: FieldSpec, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"Invalid input {spec.name!r} in record {i}", errors=[field_error(f"inputs[{i}].{spec.name}", message)]
    )


class InputPlan:
    """How each input of a graph is fed: its numpy dtype (None for sequence/map inputs) and, for a float
    `[N, k]` input with a fixed k, its row width (the fast fill)."""

    def __init__(self, inputs: list[FieldSpec]) -> None:
        self.specs = inputs
        self.names = [spec.name for spec in inputs]
        self.plan: list[tuple[FieldSpec, np.dtype[Any] | None, int | None]] = []
        for spec in inputs:
            dtype = None if non_tensor(spec) else numpy_dtype(spec.data_type)
            width = None
            if dtype is not None and dtype.kind == "f" and spec.shape is not None and len(spec.shape) == 2:
                width = spec.shape[1] if isinstance(spec.shape[1], int) and spec.shape[1] > 0 else None
            self.plan.append((spec, dtype, width))

    def feeds(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """One tensor per input from a batch of records, each record one row of every input."""
        try:
            if len(self.names) == 1:
                name = self.names[0]
                columns = [[r[name] for r in records]]
            else:
                columns = [[r[name] for r in records] for name in self.names]
        except KeyError:
            missing = sorted({name for name in self.names for r in records if name not in r})
            if not missing:
                raise
            errors = [field_error(f"inputs.{name}", "missing required input") for name in missing]
            raise ValidationFailed(f"Missing input(s): {', '.join(missing)}", errors=errors) from None
        feeds: dict[str, Any] = {}
        for (spec, dtype, width), values in zip(self.plan, columns, strict=True):
            feeds[spec.name] = values if dtype is None else stacked_tensor(spec, values, dtype, width)
        return feeds

    def whole_feeds(self, record: dict[str, Any], index: int = 0) -> dict[str, Any]:
        """One record of whole tensors (a graph without a batch axis) as the feeds of one call."""
        missing = [name for name in self.names if name not in record]
        if missing:
            errors = [field_error(f"inputs[{index}].{name}", "missing required input") for name in missing]
            raise ValidationFailed(f"Missing input(s): {', '.join(missing)}", errors=errors)
        feeds: dict[str, Any] = {}
        for spec, dtype, _width in self.plan:
            value = record[spec.name]
            feeds[spec.name] = value if dtype is None else whole_tensor(spec, value, dtype, index)
        return feeds

    def column_feeds(self, inputs: dict[str, list[np.ndarray]]) -> tuple[dict[str, np.ndarray], int] | None:
        """Feeds from numeric columns (batch scoring) and their length; None when they do not fit the inputs."""
        if set(inputs) != set(self.names):
            return None
        feeds: dict[str, np.ndarray] = {}
        size: int | None = None
        for spec, dtype, _width in self.plan:
            if dtype is None or dtype.kind not in "fiu":
                return None
            tensor = stack_columns(spec, list(inputs[spec.name]), dtype)
            if tensor is None or (size is not None and tensor.shape[0] != size):
                return None
            size = tensor.shape[0]
            feeds[spec.name] = tensor
        if not size:
            return None
        return feeds, size


def stacked_tensor(spec: FieldSpec, values: list[Any], dtype: np.dtype[Any], width: int | None = None) -> np.ndarray:
    """The records' values of one input stacked along the leading axis (a scalar per record for `[N, 1]`)."""
    size = len(values)
    if size >= FAST_INPUT_ROWS and width is not None and set(map(type, values)) <= {list, tuple}:
        # Every record a flat list of `width` numbers: one C loop over all of them (same values as asarray).
        try:
            if set(map(len, values)) == {width}:
                return np.fromiter(chain.from_iterable(values), dtype, count=size * width).reshape(size, width)
        except (TypeError, ValueError):
            pass  # nested or non-numeric values: asarray below says what is wrong
    rank = len(spec.shape) if spec.shape is not None else None
    try:  # fast path: every record already has the per-record shape
        array = np.asarray(values, dtype=dtype)
        if rank is None or array.ndim == rank:
            return array
        if array.ndim == rank - 1 and spec.shape and spec.shape[-1] in (1, None):
            return array.reshape(*array.shape, 1)  # scalars for an [N, 1] input
    except (TypeError, ValueError):
        pass
    rows = []
    for i, value in enumerate(values):
        try:
            row = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise input_error(i, spec, f"not a {spec.data_type} tensor: {exc}") from None
        if rank is not None and row.ndim == rank - 2:
            row = row.reshape(*row.shape, 1)  # a scalar for an [N, 1] input
        rows.append(row)
    for i, row in enumerate(rows):
        if (rank is not None and row.ndim != rank - 1) or row.shape != rows[0].shape:
            expected = spec.shape[1:] if spec.shape else "?"
            raise input_error(i, spec, f"wrong shape {list(row.shape)}, expected {expected}")
    return np.stack(rows)


def whole_tensor(spec: FieldSpec, value: Any, dtype: np.dtype[Any], index: int = 0) -> np.ndarray:
    """A whole input tensor as sent, checked against the declared rank and fixed dimensions.

    An empty list is a zero-length leading dimension: it takes the declared trailing dimensions (0 where
    they are dynamic), so `[]` for a `[N, 4]` input is a `(0, 4)` tensor.
    """
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise input_error(index, spec, f"not a {spec.data_type} tensor: {exc}") from None
    shape = spec.shape
    if shape is None:
        return array
    if array.size == 0 and array.ndim < len(shape):
        trailing = [d if isinstance(d, int) else 0 for d in shape[array.ndim :]]
        array = array.reshape(*array.shape, *trailing)
    fits = array.ndim == len(shape) and all(
        not isinstance(want, int) or want == got for want, got in zip(shape, array.shape, strict=True)
    )
    if not fits:
        raise input_error(index, spec, f"wrong shape {list(array.shape)}, the graph declares {shape}")
    return array


def stack_columns(spec: FieldSpec, columns: list[np.ndarray], dtype: np.dtype[Any]) -> np.ndarray | None:
    """The input tensor from its column(s), or None when they do not fit its declared shape and type."""
    if not columns or any(c.ndim != 1 or c.dtype.kind not in "biuf" for c in columns):
        return None
    if dtype.kind in "iu" and any(c.dtype.kind == "f" for c in columns):
        return None  # floats into an integer input: the record path says which values do not fit
    size = columns[0].shape[0]
    if any(c.shape[0] != size for c in columns):
        return None
    shape = spec.shape
    rank = len(shape) if shape is not None else 2
    if rank == 1 and len(columns) == 1:
        return columns[0].astype(dtype, copy=False)
    if rank != 2:
        return None
    width = shape[1] if shape is not None else None
    if isinstance(width, int) and width > 0 and width != len(columns):
        return None
    tensor = np.empty((size, len(columns)), dtype=dtype)
    for j, column in enumerate(columns):
        tensor[:, j] = column
    return tensor
