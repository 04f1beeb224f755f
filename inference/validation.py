"""Predict input checked against a model's input schema before any runtime sees it.

Errors name the record and the field (`inputs[3].petal_width`), say what was expected and what came;
every error of a request is reported at once. Unknown fields are dropped with one warning each.
"""

from __future__ import annotations

import math
from typing import Any

from inference.runtimes.base import FieldSpec, ModelDescription
from shared.errors import ValidationFailed, field_error

_ONNX_FLOATS = frozenset({"float", "double", "float16", "bfloat16"})
_ONNX_INTS = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class _Bad(Exception):
    def __init__(self, message: str, expected: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.expected = expected


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 200 else text[:200] + "…"


def _number(value: Any, kind: str) -> float | int:
    """A JSON value as a number of `kind` ("float" or "integer"); numeric strings are accepted."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad(f"expected a number ({kind})", kind)
    number: float | int
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text) if kind == "integer" and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise _Bad(f"expected a number ({kind}), got a non-numeric string", kind) from None
    else:
        number = value
    if kind == "integer":
        if isinstance(number, float):
            if not number.is_integer():
                raise _Bad("expected an integer", kind)
            number = int(number)
        return number
    return float(number)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Bad("expected a boolean", "boolean")


def _pmml_value(spec: FieldSpec, value: Any) -> Any:
    if isinstance(value, list | dict):
        raise _Bad("expected a single value", spec.data_type)
    if spec.data_type in ("float", "double"):
        return _number(value, "float")
    if spec.data_type == "integer":
        return _number(value, "integer")
    if spec.data_type == "boolean":
        return _boolean(value)
    if spec.data_type == "string":
        return value if isinstance(value, str) else str(value)
    return value  # dates and times: the engine parses them


def _in_interval(value: float, interval: dict[str, Any]) -> bool:
    closure = interval.get("closure", "closedClosed")
    left, right = interval.get("left"), interval.get("right")
    if left is not None and (value < left or (value == left and closure.startswith("open"))):
        return False
    return not (right is not None and (value > right or (value == right and closure.endswith("Open"))))


def _valid(spec: FieldSpec, value: Any) -> bool:
    if spec.op_type in ("categorical", "ordinal") and spec.values:
        return value in spec.values
    if spec.intervals and isinstance(value, int | float) and not isinstance(value, bool):
        return any(_in_interval(float(value), interval) for interval in spec.intervals)
    return True


def _check_pmml(spec: FieldSpec, value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None  # an explicit missing value: the model's own missing-value handling applies
    if spec.multi_valued:  # a list of values (association items); one value is a list of one
        return [_pmml_value(spec, item) for item in (value if isinstance(value, list) else [value])]
    if spec.missing_values and (value in spec.missing_values or str(value) in map(str, spec.missing_values)):
        return value
    treatment = spec.invalid_value_treatment or "returnInvalid"
    try:
        converted = _pmml_value(spec, value)
    except _Bad:
        if treatment == "asMissing":  # not even of the field's type: invalid, which the model reads as missing
            return None
        raise
    if isinstance(converted, float) and math.isnan(converted):
        return None  # "NaN" for a number is missing, as NaN and null are
    if _valid(spec, converted):
        return converted
    if treatment == "asMissing":
        return None
    if treatment in ("asIs", "asValue"):
        return converted  # the engine keeps it, or replaces it with the declared invalidValueReplacement
    expected: Any = spec.values if spec.values and spec.op_type != "continuous" else spec.intervals
    raise _Bad("value outside the model's valid values", expected)


def _leaf(value: Any, data_type: str) -> Any:
    if isinstance(value, list | dict):
        raise _Bad("expected a scalar element", data_type)
    if data_type in _ONNX_FLOATS:
        if value is None:
            return math.nan  # onnxruntime models (trees) read NaN as missing
        return _number(value, "float")
    if data_type in _ONNX_INTS:
        return _number(value, "integer")
    if data_type == "bool":
        return _boolean(value)
    if data_type == "string":
        if value is None:
            raise _Bad("expected a string", data_type)
        return value if isinstance(value, str) else str(value)
    return value


def _tensor(value: Any, dims: list[int | str | None], data_type: str) -> Any:
    if not dims:
        return _leaf(value, data_type)
    size = dims[0]
    if not isinstance(value, list):
        wanted = f"a list of {size} values" if isinstance(size, int) else "a list"
        raise _Bad(f"expected {wanted}", dims)
    if isinstance(size, int) and len(value) != size:
        raise _Bad(f"expected a list of {size} values, got {len(value)}", dims)
    return [_tensor(item, dims[1:], data_type) for item in value]


def _check_onnx(spec: FieldSpec, value: Any) -> Any:
    if spec.data_type.startswith(("seq(", "map(")):
        return value  # non-tensor inputs: onnxruntime checks them
    if spec.shape is None:
        return _any_tensor(spec, value)
    per_record = list(spec.shape[1:])  # the first dimension is the batch
    if per_record in ([], [1]) and not isinstance(value, list):
        return _leaf(value, spec.data_type)
    return _tensor(value, per_record, spec.data_type)


def _any_tensor(spec: FieldSpec, value: Any) -> Any:
    if isinstance(value, list):
        return [_any_tensor(spec, item) for item in value]
    return _leaf(value, spec.data_type)


def _check_whole_onnx(spec: FieldSpec, value: Any) -> Any:
    """A whole tensor for a graph without a batch axis: the declared shape, its leading dimension included."""
    if spec.data_type.startswith(("seq(", "map(")):
        return value
    if spec.shape is None:
        return _any_tensor(spec, value)
    return _tensor(value, list(spec.shape), spec.data_type)


def validate_records(
    description: ModelDescription, records: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Check and convert records for a model; returns (converted records, warnings).

    Raises `ValidationFailed` listing every bad field as `inputs[i].name` with what was expected.
    """
    check = _check_pmml
    if description.format == "onnx":
        check = _check_onnx if description.batched else _check_whole_onnx
    specs = {spec.name: spec for spec in description.inputs}
    errors: list[dict[str, Any]] = []
    unknown: dict[str, None] = {}
    converted_records: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            errors.append(field_error(f"inputs[{i}]", "expected an object", expected="object", received=_short(record)))
            continue
        unknown.update((name, None) for name in record if name not in specs)
        converted: dict[str, Any] = {}
        for name, spec in specs.items():
            location = f"inputs[{i}].{name}"
            if name not in record:
                if spec.required:
                    errors.append(field_error(location, "missing required field", expected=spec.data_type))
                else:
                    converted[name] = None
                continue
            try:
                converted[name] = check(spec, record[name])
            except _Bad as bad:
                expected = bad.expected if bad.expected is not None else spec.data_type
                errors.append(field_error(location, bad.message, expected=expected, received=_short(record[name])))
        converted_records.append(converted)
    if errors:
        fields = sorted({error["field"] for error in errors})
        shown = ", ".join(fields[:5]) + ("…" if len(fields) > 5 else "")
        raise ValidationFailed(f"Invalid input: {shown}", errors=errors)
    return converted_records, [f"ignored unknown field {name!r}" for name in unknown]


def _body_error(location: str, message: str, **kw: Any) -> ValidationFailed:
    return ValidationFailed(f"Invalid request body: {location}", errors=[field_error(location, message, **kw)])


def records_from_body(body: Any) -> list[dict[str, Any]]:
    """Records from a predict body: `{"inputs": {...}}`, `{"inputs": [{...}, ...]}` or `{"columns", "data"}`."""
    if not isinstance(body, dict):
        raise _body_error("body", "expected a JSON object", expected="object", received=type(body).__name__)
    if "inputs" in body:
        inputs = body["inputs"]
        if isinstance(inputs, dict):
            return [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise _body_error("inputs", "expected an object or a non-empty list of objects", received=_short(inputs))
        errors = [
            field_error(f"inputs[{i}]", "expected an object", expected="object", received=_short(record))
            for i, record in enumerate(inputs)
            if not isinstance(record, dict)
        ]
        if errors:
            raise ValidationFailed("Invalid request body: every record must be an object", errors=errors)
        return list(inputs)
    if "columns" in body or "data" in body:
        return _column_records(body.get("columns"), body.get("data"))
    raise _body_error(
        "inputs", "missing: send {'inputs': {...}}, {'inputs': [{...}]} or {'columns': [...], 'data': [[...]]}"
    )


def _column_records(columns: Any, data: Any) -> list[dict[str, Any]]:
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise _body_error("columns", "expected a non-empty list of field names", received=_short(columns))
    if len(set(columns)) != len(columns):
        raise _body_error("columns", "duplicate column names", received=columns)
    if not isinstance(data, list) or not data:
        raise _body_error("data", "expected a non-empty list of rows", received=_short(data))
    errors = []
    for i, row in enumerate(data):
        if not isinstance(row, list):
            errors.append(field_error(f"data[{i}]", "expected a list of values", expected="list", received=_short(row)))
        elif len(row) != len(columns):
            errors.append(field_error(f"data[{i}]", "wrong number of values", expected=len(columns), received=len(row)))
    if errors:
        raise ValidationFailed("Invalid request body: rows must match the columns", errors=errors)
    return [dict(zip(columns, row, strict=True)) for row in data]
