"""Columns to model inputs, as batch jobs and CSV predict/test map them; whole-tensor records validated."""

from __future__ import annotations

from typing import Any

import pytest

from inference.input_columns import input_columns, records_from_rows
from inference.payloads import records_from_csv
from inference.runtimes.base import EngineInfo, FieldSpec, ModelDescription
from inference.validation import validate_records
from shared.errors import ValidationFailed


def _onnx(*inputs: FieldSpec, batched: bool = True) -> ModelDescription:
    return ModelDescription(
        format="onnx",
        engine=EngineInfo(name="onnx", version="0"),
        algorithm="test",
        function_type="other",
        inputs=list(inputs),
        batched=batched,
    )


X4 = FieldSpec(name="X", data_type="float", shape=[None, 4])
COLUMNS = ["a", "b", "c", "d"]


def test_same_named_columns_and_a_single_tensor_in_order() -> None:
    assert input_columns(_onnx(X4), COLUMNS) == {"X": COLUMNS}
    age = FieldSpec(name="age", data_type="float", shape=[None, 1])
    x3 = FieldSpec(name="X", data_type="float", shape=[None, 3])
    assert input_columns(_onnx(age, x3), ["age", *COLUMNS[:3]]) == {"age": "age", "X": COLUMNS[:3]}
    assert input_columns(_onnx(X4), ["X", "other"]) == {"X": "X"}  # a column named after the input wins


def test_explicit_mapping_and_its_errors() -> None:
    assert input_columns(_onnx(X4), COLUMNS, {"X": ["d", "c", "b", "a"]}) == {"X": ["d", "c", "b", "a"]}
    with pytest.raises(ValidationFailed) as bad:
        input_columns(_onnx(X4), COLUMNS, {"X": ["a", "zz"], "nope": "a"})
    assert {e["field"] for e in bad.value.errors or []} == {"input_mapping.X", "input_mapping.nope"}
    with pytest.raises(ValidationFailed) as width:
        input_columns(_onnx(X4), COLUMNS[:3])
    assert (width.value.errors or [])[0]["field"] == "columns"


def test_records_gather_tensor_columns_and_keep_the_others() -> None:
    rows: list[list[Any]] = [[1, 2, 3, 4, "x"], [5, None, 7, 8, None]]
    records = records_from_rows([*COLUMNS, "note"], rows, {"X": COLUMNS})
    assert records == [{"note": "x", "X": [1, 2, 3, 4]}, {"X": [5, None, 7, 8]}]


def test_csv_with_empty_cells_for_a_tensor_input() -> None:
    records = records_from_csv(b"a,b,c,d\n1,2,,4\n", _onnx(X4))
    clean, _ = validate_records(_onnx(X4), records)
    values = clean[0]["X"]
    assert values[:2] == [1.0, 2.0] and values[3] == 4.0 and values[2] != values[2]  # NaN: missing


def test_whole_tensor_records_are_checked_against_the_full_shape() -> None:
    fixed = _onnx(FieldSpec(name="x", data_type="float", shape=[2, 3]), batched=False)
    clean, _ = validate_records(fixed, [{"x": [[1, 2, 3], [4, 5, 6]]}])
    assert clean == [{"x": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}]
    with pytest.raises(ValidationFailed) as refused:
        validate_records(fixed, [{"x": [1, 2, 3]}])
    assert (refused.value.errors or [])[0]["field"] == "inputs[0].x"
    scalar = _onnx(FieldSpec(name="t", data_type="int64", shape=[]), batched=False)
    assert validate_records(scalar, [{"t": 3}])[0] == [{"t": 3}]
    dynamic = _onnx(FieldSpec(name="a", data_type="float", shape=["N", 3]), batched=False)
    assert validate_records(dynamic, [{"a": []}])[0] == [{"a": []}]
