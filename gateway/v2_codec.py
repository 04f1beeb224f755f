"""Open Inference Protocol (KServe V2) over JSON: metadata, request decoding, response encoding.

Pure functions, no I/O. `model` is the registry's version JSON (a `ModelDescription` dump). Requests are
checked strictly and turned into the records runtimes take (`inference.validation`); responses are built
from the normalised predictions, so a V2 client gets the same answer as `/api/v1` whichever engine serves.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.errors import ValidationFailed, field_error

_INT_RANGES = {f"INT{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)} | {
    f"UINT{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)
}
_FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})
DATATYPES = frozenset(_INT_RANGES) | _FLOATS | {"BOOL", "BYTES"}
_ONNX_TYPES = {"float": "FP32", "double": "FP64", "float16": "FP16", "bfloat16": "BF16", "bool": "BOOL"} | {
    name.lower(): name for name in _INT_RANGES
}
_PMML_TYPES = {"double": "FP64", "float": "FP32", "integer": "INT64", "boolean": "BOOL"}
# Which normalised keys of a prediction become V2 outputs, by function type; the rest answer raw tensors.
_NORMALISED = {
    "classification": ("label", "probabilities"),
    "regression": ("value",),
    "clustering": ("cluster", "distances", "affinities"),
    "dimensionality_reduction": ("components",),
}
_MATRICES = frozenset({"distances", "affinities", "components"})


@dataclass
class InferRequest:
    """A decoded V2 inference request: records in batch order, ready for `validate_records`."""

    id: str | None
    records: list[dict[str, Any]]
    requested_outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


class _Bad(Exception):
    pass


def v2_datatype(model_format: str, data_type: str) -> str:
    """V2 datatype of an ONNX element type or a PMML data type; strings, dates and times travel as BYTES."""
    return (_ONNX_TYPES if model_format == "onnx" else _PMML_TYPES).get(data_type, "BYTES")


def _is_tensor(spec: dict[str, Any]) -> bool:
    return "(" not in str(spec.get("data_type", ""))  # seq(...)/map(...) (a ZipMap) is no tensor


def _dims(shape: list[Any] | None) -> list[int]:
    """A declared shape in V2 terms: dynamic dimensions as -1, and the batch always -1 (modelserve batches
    records itself, one at a time for a graph exported with batch size 1)."""
    if not shape:
        return [-1]
    return [-1] + [d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else -1 for d in shape[1:]]


def _datatype_of(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "BOOL"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "INT64"
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "FP64"
    return "BYTES"


def _label_datatype(model: dict[str, Any], key: str) -> str:
    fmt, targets = model.get("format", "pmml"), model.get("targets") or []
    if targets and key == "label":
        return v2_datatype(fmt, targets[0].get("data_type", "string"))
    if key == "label" and model.get("class_labels"):
        return _datatype_of(list(model["class_labels"]))
    if fmt == "onnx":  # the graph's label output (int64 for skl2onnx classifiers and KMeans)
        for spec in model.get("outputs") or []:
            if spec.get("data_type") in ("int64", "int32", "string"):
                return v2_datatype(fmt, spec["data_type"])
    return "INT64" if key == "cluster" else "BYTES"  # PMML cluster ids are mostly numbers


def _onnx_matrix_width(model: dict[str, Any]) -> int | None:
    """Width of the graph's float [N, k] output (KMeans distances, PCA components); None if it has none."""
    for spec in model.get("outputs") or []:
        shape = spec.get("shape")
        if spec.get("data_type") in ("float", "double", "float16") and shape and len(shape) == 2:
            return _dims(shape)[1]
    return None


def _output_specs(model: dict[str, Any]) -> list[dict[str, Any]]:
    fmt, function_type = model.get("format", "pmml"), model.get("function_type")
    if function_type == "classification":
        classes = model.get("class_labels")
        probabilities: dict[str, Any] = {"name": "probabilities", "datatype": "FP64"}
        probabilities["shape"] = [-1, len(classes) if classes else -1]
        if classes:
            probabilities["parameters"] = {"classes": list(classes)}
        return [{"name": "label", "datatype": _label_datatype(model, "label"), "shape": [-1]}, probabilities]
    if function_type == "regression":
        return [{"name": "value", "datatype": "FP64", "shape": [-1]}]
    width = _onnx_matrix_width(model) if fmt == "onnx" else None
    if function_type == "clustering":
        specs = [{"name": "cluster", "datatype": _label_datatype(model, "cluster"), "shape": [-1]}]
        if width is not None:  # PMML files do not say whether the engine reports distances
            specs.append({"name": "distances", "datatype": "FP64", "shape": [-1, width]})
        return specs
    if function_type == "dimensionality_reduction":
        return [{"name": "components", "datatype": "FP64", "shape": [-1, -1 if width is None else width]}]
    return [
        {"name": s["name"], "datatype": v2_datatype(fmt, s["data_type"]), "shape": _dims(s.get("shape"))}
        for s in model.get("outputs") or []
        if _is_tensor(s)
    ]


EXTENSIONS = ("binary_tensor_data", "model_repository", "model_configuration", "statistics")
"""The protocol extensions the gateway serves (Triton's names for them)."""


def server_metadata(version: str) -> dict[str, Any]:
    """`GET /v2`: the server's name, version and protocol extensions."""
    return {"name": "modelserve", "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(name: str, version: int, model: dict[str, Any]) -> dict[str, Any]:
    """`GET /v2/models/{name}[/versions/{v}]`: one input per ONNX tensor or PMML field, the normalised outputs."""
    fmt = model.get("format", "pmml")
    inputs = [
        {
            "name": spec["name"],
            "datatype": v2_datatype(fmt, spec["data_type"]),
            "shape": _dims(spec.get("shape")) if fmt == "onnx" else [-1],
        }
        for spec in model.get("inputs") or []
    ]
    platform = "onnxruntime_onnx" if fmt == "onnx" else "pmml"
    return {
        "name": name,
        "versions": [str(version)],
        "platform": platform,
        "inputs": inputs,
        "outputs": _output_specs(model),
    }


def _shape_of(data: Any, depth: int = 0) -> tuple[int, ...]:
    """Dimensions of (possibly nested) tensor data; ValueError if ragged or an element is an object."""
    if isinstance(data, dict):
        raise ValueError("an element is an object")
    if not isinstance(data, list):
        return ()
    if depth > 32:  # a JSON parser allows deeper nesting than Python's recursion limit
        raise ValueError("nested too deeply")
    inner = {_shape_of(item, depth + 1) for item in data}
    if len(inner) > 1:
        raise ValueError("nested lists of different lengths")
    return (len(data), *(inner.pop() if inner else ()))


def _flat(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flat(item)
    else:
        yield data


def _castable(received: Any, want: str) -> bool:
    """Whether data sent as `received` may feed an input of `want`: the casts clients expect (FP64 into FP32,
    INT32 into INT64, integers into floats, integral floats into integers); each element is checked after."""
    if received == want:
        return True
    numbers = _FLOATS | frozenset(_INT_RANGES)
    return received in numbers and want in numbers


_FLOAT_MAX = {"FP16": 65504.0, "BF16": 3.3895313892515355e38, "FP32": 3.4028234663852886e38}
_EXACT_INTS = {"FP16": 2**11, "BF16": 2**8, "FP32": 2**24, "FP64": 2**53}
"""Largest magnitude up to which every integer is exact in each float type."""


def _element(value: Any, datatype: str, nullable: bool) -> Any:
    if value is None:
        if nullable or datatype in _FLOATS:  # a missing value: PMML's own treatment, NaN for ONNX floats
            return None
        raise _Bad("null is not allowed here")
    if datatype == "BYTES":
        if isinstance(value, str):
            return value
        raise _Bad("expected a string")
    if datatype == "BOOL":
        if isinstance(value, bool):
            return value
        raise _Bad("expected true or false")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"expected a number ({datatype})")
    if datatype in _FLOATS:
        if isinstance(value, int) and abs(value) > _EXACT_INTS[datatype] and _rounds(value, datatype):
            raise _Bad(f"{value} is not exact in {datatype}: the cast would lose the integer")
        if math.isfinite(value) and abs(value) > _FLOAT_MAX.get(datatype, math.inf):
            raise _Bad(f"{value} overflows {datatype}")
        return float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise _Bad(f"expected an integer ({datatype}): the cast would lose the fraction")
        value = int(value)
    low, high = _INT_RANGES[datatype]
    if not low <= value <= high:
        raise _Bad(f"out of range for {datatype}")
    return value


def _checked_at_once(data: list[Any], want: str) -> list[Any] | None:
    """`data` as `_element` would return it, checked by type in one pass when every element is of the common
    kind (floats for a float input, ints for an integer one); None when the slow per-element path must say why."""
    if want in _FLOATS:
        if all(type(v) is float for v in data):
            limit = _FLOAT_MAX.get(want)
            if limit is not None and bool(np.any(np.abs(np.asarray(data, dtype=np.float64)) > limit)):
                return None  # an infinity is fine, an overflow is not: the element check tells them apart
            return data
        return None
    if want in _INT_RANGES and data and all(type(v) is int for v in data):
        low, high = _INT_RANGES[want]
        return data if low <= min(data) and max(data) <= high else None
    return None


def _rounds(value: int, datatype: str) -> bool:
    """Whether the integer changes when stored as `datatype` (only asked past the exact range)."""
    if datatype == "FP64":
        try:
            return int(float(value)) != value
        except OverflowError:
            return True
    bits = {"FP32": 24, "BF16": 8, "FP16": 11}[datatype]
    magnitude = abs(value)
    return magnitude >> max(0, magnitude.bit_length() - bits) << max(0, magnitude.bit_length() - bits) != magnitude


def _nest(flat: list[Any], dims: list[int]) -> list[Any]:
    if len(dims) <= 1:
        return flat
    step = math.prod(dims[1:])
    return [_nest(flat[i * step : (i + 1) * step], dims[1:]) for i in range(dims[0])]


def _known_outputs(model: dict[str, Any]) -> list[str]:
    names = [spec["name"] for spec in _output_specs(model)]
    if model.get("function_type") == "clustering":
        names += [n for n in ("distances", "affinities") if n not in names]
    return names


def _decode_input(
    loc: str, item: dict[str, Any], spec: dict[str, Any], fmt: str, errors: list[dict[str, Any]]
) -> tuple[int, list[Any]] | None:
    """One request input as (batch size, per-record values); appends an error and returns None if bad."""
    want = v2_datatype(fmt, spec["data_type"])
    datatype, shape, data = item.get("datatype"), item.get("shape"), item.get("data")
    if not _castable(datatype, want):
        message = "datatype does not fit the model's input" if datatype in DATATYPES else "unknown datatype"
        errors.append(field_error(f"{loc}.datatype", message, expected=want, received=datatype))
        return None
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        errors.append(field_error(f"{loc}.shape", "expected a list of integers", received=shape))
        return None
    model_shape = spec.get("shape") if fmt == "onnx" else [None]
    scalar = model_shape is not None and list(model_shape[1:]) in ([], [1])  # one value per record
    if scalar:
        expected: list[int] = [-1] if fmt == "pmml" else _dims(model_shape)
        fits = len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)
    else:
        expected = _dims(model_shape)
        fits = (model_shape is None and len(shape) >= 1) or (
            model_shape is not None
            and len(shape) == len(model_shape)
            and all(want_d in (-1, got) for want_d, got in zip(expected[1:], shape[1:], strict=True))
        )
    if not fits or any(d < 0 for d in shape) or shape[0] == 0:
        message = "an empty batch" if fits and shape[0] == 0 else "shape does not fit the model's input"
        errors.append(field_error(f"{loc}.shape", message, expected=expected, received=shape))
        return None
    if not isinstance(data, list):
        binary = isinstance(item.get("parameters"), dict) and "binary_data_size" in item["parameters"]
        message = (
            f"binary_data_size without the {'Inference-Header-Content-Length'} header: no binary data was sent"
            if binary
            else "expected a JSON array"
        )
        errors.append(field_error(f"{loc}.data", message, received=None if binary else data))
        return None
    # Flat data (what binary tensors, gRPC and most clients send) skips the walk over nested lists; a list
    # hidden among its elements is still refused, as an element that is no number.
    is_flat = not data or not isinstance(data[0], list)
    try:
        count = len(data) if is_flat else math.prod(_shape_of(data))
    except ValueError as exc:
        errors.append(field_error(f"{loc}.data", str(exc), expected=shape))
        return None
    if count != math.prod(shape):
        message = f"shape {shape} holds {math.prod(shape)} elements, the data has {count}"
        errors.append(field_error(f"{loc}.data", message, expected=math.prod(shape), received=count))
        return None
    flat = _checked_at_once(data, want) if is_flat else None
    if flat is None:
        flat = []
        for j, value in enumerate(data if is_flat else _flat(data)):
            try:
                flat.append(_element(value, want, nullable=fmt == "pmml"))
            except _Bad as bad:
                errors.append(field_error(f"{loc}.data", f"element {j}: {bad}", expected=want, received=value))
                return None
    if len(shape) == 1 or (scalar and len(shape) == 2):
        return shape[0], flat
    return shape[0], _nest(flat, shape)


def records_from_infer(body: Any, model: dict[str, Any]) -> InferRequest:
    """Decode a V2 inference request into records for `model`; `ValidationFailed` names every bad field."""
    if not isinstance(body, dict):
        error = field_error("body", "expected a JSON object", expected="object", received=type(body).__name__)
        raise ValidationFailed("Invalid inference request: body", errors=[error])
    errors: list[dict[str, Any]] = []
    request_id = body.get("id")
    parameters = {} if body.get("parameters") is None else body["parameters"]
    if request_id is not None and not isinstance(request_id, str):
        errors.append(field_error("id", "expected a string", received=request_id))
    if not isinstance(parameters, dict):
        errors.append(field_error("parameters", "expected an object", received=parameters))
    requested = _requested_outputs(body.get("outputs"), _known_outputs(model), errors)
    fmt = model.get("format", "pmml")
    specs = {spec["name"]: spec for spec in model.get("inputs") or []}
    inputs = body.get("inputs")
    columns: dict[str, tuple[int, list[Any]] | None] = {}
    batches: dict[int, int] = {}  # request input index -> its batch size (first dimension)
    if not isinstance(inputs, list) or not inputs:
        errors.append(field_error("inputs", "expected a non-empty list of input tensors", received=inputs))
        inputs = []
    for i, item in enumerate(inputs):
        loc = f"inputs[{i}]"
        if not isinstance(item, dict):
            errors.append(field_error(loc, "expected an object", expected="object", received=item))
            continue
        name = item.get("name")
        duplicate = isinstance(name, str) and name in columns
        if not isinstance(name, str) or name not in specs or duplicate:
            message = "duplicate input" if duplicate else "unknown input"
            errors.append(field_error(f"{loc}.name", message, expected=list(specs), received=name))
            continue
        columns[name] = decoded = _decode_input(loc, item, specs[name], fmt, errors)
        if decoded is not None:
            batches[i] = decoded[0]
    # The batch size most inputs agree on; the odd ones out are the ones to blame.
    size = max(batches.values(), key=list(batches.values()).count, default=0)
    for i, n in batches.items():
        if n != size:
            errors.append(
                field_error(
                    f"inputs[{i}].shape", "batch size differs from the other inputs'", expected=size, received=n
                )
            )
    for name, spec in specs.items():
        if name not in columns and spec.get("required", True) and inputs:
            errors.append(field_error("inputs", f"missing input {name!r}", expected=name))
    if errors:
        fields = sorted({e["field"] for e in errors})
        raise ValidationFailed("Invalid inference request: " + ", ".join(fields[:5]), errors=errors)
    records = [
        {name: column[1][r] for name, column in columns.items() if column is not None}
        | {name: None for name in specs if name not in columns}  # an optional input left out: missing
        for r in range(size)
    ]
    return InferRequest(request_id, records, requested, parameters)


def _requested_outputs(outputs: Any, known: list[str], errors: list[dict[str, Any]]) -> list[str] | None:
    if outputs is None or outputs == []:
        return None  # the spec's default: every output
    if not isinstance(outputs, list):
        errors.append(field_error("outputs", "expected a list of {name} objects", received=outputs))
        return None
    names: list[str] = []
    for i, item in enumerate(outputs):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in known or name in names:
            message = "duplicate output" if name in names else "unknown output"
            errors.append(field_error(f"outputs[{i}].name", message, expected=known, received=name))
        else:
            names.append(name)
        parameters = item.get("parameters") if isinstance(item, dict) else None
        if isinstance(parameters, dict) and parameters.get("classification"):
            # Triton's classification extension ("score:index:label" strings): not served; the label and
            # probabilities outputs carry the same answer. Refused rather than silently ignored.
            message = "the classification extension is not supported: ask for the label and probabilities outputs"
            errors.append(field_error(f"outputs[{i}].parameters.classification", message))
    return names


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
    if datatype in _FLOATS:
        return float(value)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    raise ValueError(value)


def _tensor(values: list[Any], declared: str | None) -> dict[str, Any]:
    """Per-record values as a V2 tensor: the declared datatype, or one inferred when the values do not fit it."""
    shape = [len(values), *_shape_of(values[0])] if values else [0]
    if _shape_of(values) != tuple(shape):
        raise ValueError("records of different shapes")
    flat = list(_flat(values))
    datatype = declared or _datatype_of(flat)
    try:
        data = [_coerce(v, datatype) for v in flat]
    except (TypeError, ValueError):
        datatype = _datatype_of(flat)
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


def _available_outputs(model: dict[str, Any], predictions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    declared = {spec["name"]: spec["datatype"] for spec in _output_specs(model)}
    keys = _NORMALISED.get(str(model.get("function_type")))
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
            tensors[name] = _tensor(values, "FP64" if name in _MATRICES else declared.get(name))
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
