"""Open Inference Protocol (KServe V2) over JSON: metadata and request decoding (answers: `gateway.v2_outputs`).

Pure functions, no I/O. `model` is the registry's version JSON (a `ModelDescription` dump). Requests are
checked strictly and turned into the records runtimes take (`inference.validation`); responses are built
from the normalised predictions, so a V2 client gets the same answer as `/api/v1` whichever engine serves.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.v2_casts import DATATYPES, INT_RANGES, Bad, castable, checked_at_once, element
from shared.errors import ValidationFailed, field_error

_ONNX_TYPES = {"float": "FP32", "double": "FP64", "float16": "FP16", "bfloat16": "BF16", "bool": "BOOL"} | {
    name.lower(): name for name in INT_RANGES
}
_PMML_TYPES = {"double": "FP64", "float": "FP32", "integer": "INT64", "boolean": "BOOL"}
# Which normalised keys of a prediction become V2 outputs, by function type; the rest answer raw tensors.
NORMALISED = {
    "classification": ("label", "probabilities"),
    "regression": ("value",),
    "clustering": ("cluster", "distances", "affinities"),
    "dimensionality_reduction": ("components",),
}
MATRICES = frozenset({"distances", "affinities", "components"})


@dataclass
class InferRequest:
    """A decoded V2 inference request: records in batch order, ready for `validate_records`."""

    id: str | None
    records: list[dict[str, Any]]
    requested_outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def v2_datatype(model_format: str, data_type: str) -> str:
    """V2 datatype of an ONNX element type or a PMML data type; strings, dates and times travel as BYTES."""
    return (_ONNX_TYPES if model_format == "onnx" else _PMML_TYPES).get(data_type, "BYTES")


def _is_tensor(spec: dict[str, Any]) -> bool:
    return "(" not in str(spec.get("data_type", ""))  # seq(...)/map(...) (a ZipMap) is no tensor


def _dim(d: Any) -> int:  # a fixed dimension, else -1
    return d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else -1


def _dims(shape: list[Any] | None, batched: bool = True) -> list[int]:
    """A declared shape in V2 terms: dynamic dimensions as -1. With a batch axis its first dimension is always
    -1 (modelserve batches records itself); a graph without one is reported exactly as it declares itself."""
    if not batched:
        return [_dim(d) for d in shape or []]
    if not shape:
        return [-1]
    return [-1] + [_dim(d) for d in shape[1:]]


def is_batched(model: dict[str, Any]) -> bool:
    """Whether the model takes rows (a common leading batch axis): PMML always; ONNX as its description says."""
    return model.get("format", "pmml") != "onnx" or model.get("batched", True) is not False


def datatype_of(values: list[Any]) -> str:
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
        return datatype_of(list(model["class_labels"]))
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


def output_specs(model: dict[str, Any]) -> list[dict[str, Any]]:
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
    batched = is_batched(model)
    return [
        {"name": s["name"], "datatype": v2_datatype(fmt, s["data_type"]), "shape": _dims(s.get("shape"), batched)}
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
            "shape": _dims(spec.get("shape"), is_batched(model)) if fmt == "onnx" else [-1],
        }
        for spec in model.get("inputs") or []
    ]
    platform = "onnxruntime_onnx" if fmt == "onnx" else "pmml"
    return {
        "name": name,
        "versions": [str(version)],
        "platform": platform,
        "inputs": inputs,
        "outputs": output_specs(model),
    }


def shape_of(data: Any, depth: int = 0) -> tuple[int, ...]:
    """Dimensions of (possibly nested) tensor data; ValueError if ragged or an element is an object."""
    if isinstance(data, dict):
        raise ValueError("an element is an object")
    if not isinstance(data, list):
        return ()
    if depth > 32:  # a JSON parser allows deeper nesting than Python's recursion limit
        raise ValueError("nested too deeply")
    inner = {shape_of(item, depth + 1) for item in data}
    if len(inner) > 1:
        raise ValueError("nested lists of different lengths")
    return (len(data), *(inner.pop() if inner else ()))


def flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for item in data:
            yield from flatten(item)
    else:
        yield data


def _nest(flat: list[Any], dims: list[int]) -> list[Any]:
    if len(dims) <= 1:
        return flat
    step = math.prod(dims[1:])
    return [_nest(flat[i * step : (i + 1) * step], dims[1:]) for i in range(dims[0])]


def _known_outputs(model: dict[str, Any]) -> list[str]:
    names = [spec["name"] for spec in output_specs(model)]
    if model.get("function_type") == "clustering":
        names += [n for n in ("distances", "affinities") if n not in names]
    return names


def _decode_input(
    loc: str, item: dict[str, Any], spec: dict[str, Any], fmt: str, errors: list[dict[str, Any]]
) -> tuple[int, list[Any]] | None:
    """One request input as (batch size, per-record values); appends an error and returns None if bad."""
    want = v2_datatype(fmt, spec["data_type"])
    datatype, shape, data = item.get("datatype"), item.get("shape"), item.get("data")
    if not castable(datatype, want):
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
        count = len(data) if is_flat else math.prod(shape_of(data))
    except ValueError as exc:
        errors.append(field_error(f"{loc}.data", str(exc), expected=shape))
        return None
    if count != math.prod(shape):
        message = f"shape {shape} holds {math.prod(shape)} elements, the data has {count}"
        errors.append(field_error(f"{loc}.data", message, expected=math.prod(shape), received=count))
        return None
    flat = checked_at_once(data, want) if is_flat else None
    if flat is None:
        flat = []
        for j, value in enumerate(data if is_flat else flatten(data)):
            try:
                flat.append(element(value, want, nullable=fmt == "pmml"))
            except Bad as bad:
                errors.append(field_error(f"{loc}.data", f"element {j}: {bad}", expected=want, received=value))
                return None
    if len(shape) == 1 or (scalar and len(shape) == 2):
        return shape[0], flat
    return shape[0], _nest(flat, shape)


def _decode_whole(loc: str, item: dict[str, Any], spec: dict[str, Any], errors: list[dict[str, Any]]) -> Any:
    """One input of a graph without a batch axis: its whole tensor (zero-length dimensions allowed), nested."""
    want = v2_datatype("onnx", spec["data_type"])
    datatype, shape, data = item.get("datatype"), item.get("shape"), item.get("data")
    if not castable(datatype, want):
        message = "datatype does not fit the model's input" if datatype in DATATYPES else "unknown datatype"
        errors.append(field_error(f"{loc}.datatype", message, expected=want, received=datatype))
        return None
    declared = _dims(spec.get("shape"), batched=False)
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        shape = None
    fits = shape is not None and len(shape) == len(declared) and min(shape, default=0) >= 0
    if shape is None or not fits or any(w not in (-1, g) for w, g in zip(declared, shape, strict=True)):
        errors.append(field_error(f"{loc}.shape", "shape does not fit the model's input", expected=declared,
                                  received=shape))  # fmt: skip
        return None
    flat_input = data if isinstance(data, list) else [data] if not shape else None
    if flat_input is None:
        errors.append(field_error(f"{loc}.data", "expected a JSON array", received=data))
        return None
    flat = list(flatten(flat_input))
    if len(flat) != math.prod(shape):
        message = f"shape {shape} holds {math.prod(shape)} elements, the data has {len(flat)}"
        errors.append(field_error(f"{loc}.data", message, expected=math.prod(shape), received=len(flat)))
        return None
    values = []
    for j, value in enumerate(flat):
        try:
            values.append(element(value, want, nullable=False))
        except Bad as bad:
            errors.append(field_error(f"{loc}.data", f"element {j}: {bad}", expected=want, received=value))
            return None
    return values[0] if not shape else _nest(values, shape)


def _whole_tensors(body: dict[str, Any], model: dict[str, Any], requested: list[str] | None,
                   errors: list[dict[str, Any]]) -> InferRequest:  # fmt: skip
    """A request to a graph without a batch axis: one record holding every input's whole tensor."""
    specs = {spec["name"]: spec for spec in model.get("inputs") or []}
    inputs = body.get("inputs")
    record: dict[str, Any] = {}
    if not isinstance(inputs, list) or not inputs:
        errors.append(field_error("inputs", "expected a non-empty list of input tensors", received=inputs))
        inputs = []
    for i, item in enumerate(inputs):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in specs or name in record:
            message = "duplicate input" if name in record else "unknown input"
            errors.append(field_error(f"inputs[{i}].name", message, expected=list(specs), received=name))
            continue
        record[name] = _decode_whole(f"inputs[{i}]", item, specs[name], errors)
    for name in specs:
        if name not in record and inputs:
            errors.append(field_error("inputs", f"missing input {name!r}", expected=name))
    if errors:
        fields = sorted({e["field"] for e in errors})
        raise ValidationFailed("Invalid inference request: " + ", ".join(fields[:5]), errors=errors)
    return InferRequest(body.get("id"), [record], requested, body.get("parameters") or {})


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
    if not is_batched(model):
        return _whole_tensors(body, model, requested, errors)
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
