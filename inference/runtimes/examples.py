"""Example request bodies built from a model's input schema (the console's test form and the docs use them)."""

from __future__ import annotations

from typing import Any

from inference.runtimes.base import FieldSpec, ModelDescription

_INTEGER = {"integer", "int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_FLOAT = {"double", "float", "float16", "float32", "float64", "real"}


def _scalar(spec: FieldSpec) -> Any:
    if spec.values:
        return spec.values[0]
    kind = spec.data_type.lower()
    if spec.intervals:
        first = spec.intervals[0]
        left, right = first.get("left"), first.get("right")
        if left is not None and right is not None:
            mid = (float(left) + float(right)) / 2
            return round(mid) if kind in _INTEGER else mid
        bound = left if left is not None else right
        if bound is not None:
            return int(bound) if kind in _INTEGER else float(bound)
    if kind in _INTEGER:
        return 0
    if kind in _FLOAT:
        return 0.0
    if kind == "boolean" or kind == "bool":
        return False
    return "a"


def example_value(spec: FieldSpec, batched: bool = True) -> Any:
    """A value the validator accepts: a scalar, or a list for an `[N, k]` tensor input; for a graph without
    a batch axis (`batched` False), the whole tensor of the declared shape (dynamic dimensions as 1)."""
    shape = spec.shape or []
    value = _scalar(spec)
    if spec.multi_valued:  # a PMML transaction: a list of items
        return [value]
    if not batched and "(" not in spec.data_type:
        for size in reversed(shape):
            value = [value] * (size if isinstance(size, int) and size >= 0 else 1)
        return value
    if len(shape) >= 2:
        inner = [d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]]
        for size in reversed(inner):
            if size == 1 and len(inner) == 1:
                return value
            value = [value] * size
    return value


def example_body(description: ModelDescription) -> dict[str, Any]:
    return {"inputs": {spec.name: example_value(spec, description.batched) for spec in description.inputs}}
