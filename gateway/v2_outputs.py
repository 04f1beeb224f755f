"""Open Inference Protocol (KServe V2) answers: V2 output tensors from the normalised predictions.

Pure functions, no I/O. Tabular models answer their normalised keys (`label`/`probabilities`, `value`,
`cluster`/`distances`, `components`), others their raw tensors, so a V2 client gets the same answer as
`/api/v1` whichever engine serves.
"""

from __future__ import annotations

from typing import Any

from gateway.v2_casts import FLOATS
from gateway.v2_codec import (
    MATRICES,
    NORMALISED,
    InferRequest,
    datatype_of,
    flatten,
    is_batched,
    output_specs,
    shape_of,
)
from shared.errors import ValidationFailed, field_error


def _coerce(value: Any, datatype: str) -> Any:
    if value is None:
        return None
    if datatype == "BYTES":
        return value if isinstance(value, str) else str(value)
    if datatype == "BOOL":
        if isinstance(value, bool):
            return value
        raise ValueError(value)
    if isinstance(value, bool):
        raise ValueError(value)
    if datatype in FLOATS:
        return float(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    raise ValueError(value)


def _tensor(values: list[Any], declared: str | None) -> dict[str, Any]:
    """Per-record values as a V2 tensor: the declared datatype, or one inferred when the values do not fit it."""
    shape = [len(values), *shape_of(values[0])] if values else [0]
    if shape_of(values) != tuple(shape):
        raise ValueError("records of different shapes")
    flat = list(flatten(values))
    datatype = declared or datatype_of(flat)
    try:
        data = [_coerce(v, datatype) for v in flat]
    except (TypeError, ValueError):
        datatype = datatype_of(flat)
        data = [_coerce(v, datatype) for v in flat]
    return {"shape": shape, "datatype": datatype, "data": data}


def _probabilities(values: list[Any], class_labels: list[Any] | None) -> dict[str, Any]:
    classes = list(class_labels or [])
    keys = {str(c) for c in classes}
    classes += [k for k in dict.fromkeys(k for p in values for k in p or {}) if k not in keys]  # classes found
    names = [str(c) for c in classes]
    empty: dict[str, Any] = {}
    data = [(p or empty).get(name) for p in values for name in names]
    return {"shape": [len(values), len(classes)], "datatype": "FP64", "parameters": {"classes": classes}, "data": data}


def _whole_outputs(model: dict[str, Any], predictions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A graph without a batch axis answers one prediction whose raw outputs are whole tensors: each goes back
    with the shape onnxruntime gave it (`[]` for a scalar), no axis added or dropped."""
    declared = {spec["name"]: spec["datatype"] for spec in output_specs(model)}
    raw = (predictions[0].get("raw") if predictions else None) or {}
    tensors: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        try:
            shape = list(shape_of(value))
        except ValueError:
            continue  # a map or ragged sequence has no tensor form
        flat = list(flatten(value)) if shape else [value]
        datatype = declared.get(name) or datatype_of(flat)
        try:
            data = [_coerce(v, datatype) for v in flat]
        except (TypeError, ValueError):
            datatype = datatype_of(flat)
            data = [_coerce(v, datatype) for v in flat]
        tensors[name] = {"shape": shape, "datatype": datatype, "data": data}
    return tensors


def _available_outputs(model: dict[str, Any], predictions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if not is_batched(model):
        return _whole_outputs(model, predictions)
    declared = {spec["name"]: spec["datatype"] for spec in output_specs(model)}
    keys = NORMALISED.get(str(model.get("function_type")))
    rows = [p if keys else p.get("raw") or {} for p in predictions]
    names = list(keys or [*declared, *(k for k in (rows[0] if rows else {}) if k not in declared)])
    tensors: dict[str, dict[str, Any]] = {}
    for name in names:
        if not any(name in row and row[name] not in ({}, []) for row in rows):
            continue  # the model does not give this output (a label of None is still an answer)
        values = [row.get(name) for row in rows]
        if name == "probabilities":
            tensors[name] = _probabilities(values, model.get("class_labels"))
            continue
        try:
            tensors[name] = _tensor(values, "FP64" if name in MATRICES else declared.get(name))
        except ValueError:
            continue  # a map or ragged sequence (a ZipMap) has no tensor form; `/api/v1` answers it
    return tensors


def infer_response(
    name: str, version: int, request: InferRequest, predictions: list[dict[str, Any]], model: dict[str, Any]
) -> dict[str, Any]:
    """A V2 inference response from normalised predictions (raw tensors for models of no tabular kind)."""
    tensors = _available_outputs(model, predictions)
    wanted = request.requested_outputs if request.requested_outputs is not None else list(tensors)
    errors = [
        field_error(f"outputs[{i}].name", "the model gives no such output", expected=list(tensors), received=out)
        for i, out in enumerate(wanted)
        if out not in tensors
    ]
    if errors:
        raise ValidationFailed("Invalid inference request: unknown output", errors=errors)
    response: dict[str, Any] = {"model_name": name, "model_version": str(version)}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = [{"name": out, **tensors[out]} for out in wanted]
    return response
