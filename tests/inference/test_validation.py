"""Predict bodies and records checked against a model's input schema (no engine involved)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from inference.runtimes.base import EngineInfo, FieldSpec, ModelDescription
from inference.runtimes.pmml_schema import describe_pmml, parse_pmml
from inference.validation import records_from_body, validate_records
from shared.errors import ValidationFailed
from tests.fixtures import models


def _pmml_description(path: Path) -> ModelDescription:
    schema = describe_pmml(parse_pmml(path.read_bytes()))
    return ModelDescription(
        format="pmml",
        engine=EngineInfo(name="pmml", version="0"),
        algorithm=schema.algorithm,
        function_type=schema.function_type,
        inputs=schema.inputs,
    )


def _description(model_format: Any, *inputs: FieldSpec) -> ModelDescription:
    return ModelDescription(
        format=model_format,
        engine=EngineInfo(name=model_format, version="0"),
        algorithm="test",
        function_type="other",
        inputs=list(inputs),
    )


@pytest.fixture(scope="module")
def glm(tmp_path_factory: pytest.TempPathFactory) -> ModelDescription:
    return _pmml_description(models.make_pmml_general_regression(tmp_path_factory.mktemp("glm")))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ModelDescription:
    return _pmml_description(models.make_pmml_tree_without_output(tmp_path_factory.mktemp("tree")))


ONNX_X = _description("onnx", FieldSpec(name="X", data_type="float", shape=[None, 4]))


def _errors(call: Any) -> list[dict[str, Any]]:
    with pytest.raises(ValidationFailed) as caught:
        call()
    assert caught.value.status == 422
    return caught.value.errors or []


# --- records_from_body -------------------------------------------------------------------------------------


def test_body_forms() -> None:
    record = {"a": 1, "b": "x"}
    assert records_from_body({"inputs": record}) == [record]
    assert records_from_body({"inputs": [record, {"a": 2}]}) == [record, {"a": 2}]
    assert records_from_body({"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}) == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": "y"},
    ]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ([1, 2], ["body"]),
        ({}, ["inputs"]),
        ({"instances": [{"a": 1}]}, ["inputs"]),
        ({"inputs": []}, ["inputs"]),
        ({"inputs": 5}, ["inputs"]),
        ({"inputs": [{"a": 1}, "x", {"a": 2}, 3]}, ["inputs[1]", "inputs[3]"]),
        ({"columns": "a", "data": [[1]]}, ["columns"]),
        ({"columns": ["a", "a"], "data": [[1, 2]]}, ["columns"]),
        ({"columns": ["a"], "data": []}, ["data"]),
        ({"data": [[1]]}, ["columns"]),
        ({"columns": ["a", "b"], "data": [[1, 2], [3, 4], [5, 6], [7], "row"]}, ["data[3]", "data[4]"]),
    ],
)
def test_bad_bodies_name_the_field(body: Any, fields: list[str]) -> None:
    assert [e["field"] for e in _errors(lambda: records_from_body(body))] == fields


def test_wrong_row_length_says_what_was_expected() -> None:
    (error,) = _errors(lambda: records_from_body({"columns": ["a", "b"], "data": [[1, 2], [1, 2, 3]]}))
    assert (error["field"], error["expected"], error["received"]) == ("data[1]", 2, 3)


# --- PMML records ------------------------------------------------------------------------------------------


def test_numeric_strings_are_converted(glm: ModelDescription) -> None:
    records, warnings = validate_records(glm, [{"age": "40", "work": "public", "hours": " 37.5 "}])
    assert records == [{"age": 40.0, "work": "public", "hours": 37.5}]
    assert isinstance(records[0]["age"], float)
    assert warnings == []


def test_every_bad_field_of_every_record_is_reported(glm: ModelDescription) -> None:
    records = [
        {"age": "abc", "work": "public", "hours": 40},
        {"age": 30, "work": "private", "hours": 10},
        {"work": "self", "hours": [1, 2]},
    ]
    errors = _errors(lambda: validate_records(glm, records))
    assert [e["field"] for e in errors] == ["inputs[0].age", "inputs[2].age", "inputs[2].hours"]
    assert errors[0]["received"] == "abc" and "number" in errors[0]["message"]
    assert errors[1]["message"] == "missing required field"


def test_unknown_fields_are_dropped_with_one_warning_each(glm: ModelDescription) -> None:
    base = {"age": 40, "work": "public", "hours": 40}
    records, warnings = validate_records(glm, [{**base, "foo": 1}, {**base, "foo": 2, "bar": 3}])
    assert all(set(r) == {"age", "work", "hours"} for r in records)
    assert warnings == ["ignored unknown field 'foo'", "ignored unknown field 'bar'"]


def test_interval_with_return_invalid_is_an_error(glm: ModelDescription) -> None:
    (error,) = _errors(lambda: validate_records(glm, [{"age": 130, "work": "public", "hours": 40}]))
    assert error["field"] == "inputs[0].age"
    assert error["expected"] == [{"closure": "closedClosed", "left": 0.0, "right": 120.0}]
    assert validate_records(glm, [{"age": 120, "work": "public", "hours": 40}])[0][0]["age"] == 120.0


def test_as_missing_and_as_is_treatments(glm: ModelDescription) -> None:
    records, _ = validate_records(glm, [{"age": 40, "work": "unemployed", "hours": 100}])
    assert records[0]["work"] is None  # asMissing
    assert records[0]["hours"] == 100.0  # outside [0, 100) but asIs


def test_declared_missing_values_and_nulls_pass(glm: ModelDescription) -> None:
    records, _ = validate_records(glm, [{"age": None, "work": "NA", "hours": float("nan")}])
    assert records == [{"age": None, "work": "NA", "hours": None}]


def test_category_outside_the_declared_values(tree: ModelDescription) -> None:
    (error,) = _errors(lambda: validate_records(tree, [{"temperature": 60, "outlook": "snow"}]))
    assert error["field"] == "inputs[0].outlook"
    assert error["expected"] == ["sunny", "overcast", "rain"]
    assert error["received"] == "snow"


def test_integer_boolean_and_optional_fields() -> None:
    description = _description(
        "pmml",
        FieldSpec(name="n", data_type="integer"),
        FieldSpec(name="flag", data_type="boolean"),
        FieldSpec(name="note", data_type="string", required=False),
    )
    records, _ = validate_records(description, [{"n": "3", "flag": "TRUE"}, {"n": 4.0, "flag": 0, "note": 7}])
    assert records == [{"n": 3, "flag": True, "note": None}, {"n": 4, "flag": False, "note": "7"}]
    errors = _errors(lambda: validate_records(description, [{"n": 2.5, "flag": "maybe"}, {"n": True, "flag": 1}]))
    assert [e["field"] for e in errors] == ["inputs[0].n", "inputs[0].flag", "inputs[1].n"]


def test_records_must_be_objects(glm: ModelDescription) -> None:
    assert [e["field"] for e in _errors(lambda: validate_records(glm, ["x"]))] == ["inputs[0]"]  # type: ignore[list-item]


# --- ONNX records ------------------------------------------------------------------------------------------


def test_onnx_tensor_rows_are_converted() -> None:
    records, _ = validate_records(ONNX_X, [{"X": ["5.1", 3.5, 1, 0.2]}])
    assert records == [{"X": [5.1, 3.5, 1.0, 0.2]}]


def test_onnx_tensor_length_must_match() -> None:
    records = [{"X": [1, 2, 3, 4]}, {"X": [1, 2, 3]}, {"X": 5.0}, {"X": [1, 2, "abc", 4]}]
    errors = _errors(lambda: validate_records(ONNX_X, records))
    assert [e["field"] for e in errors] == ["inputs[1].X", "inputs[2].X", "inputs[3].X"]
    assert errors[0]["expected"] == [4]
    assert errors[0]["message"] == "expected a list of 4 values, got 3"


def test_onnx_scalars_nested_shapes_and_types() -> None:
    description = _description(
        "onnx",
        FieldSpec(name="s", data_type="double", shape=["N", 1]),
        FieldSpec(name="m", data_type="int64", shape=["N", 2, 2]),
        FieldSpec(name="t", data_type="string", shape=["N"]),
    )
    records, _ = validate_records(description, [{"s": None, "m": [[1, "2"], [3, 4.0]], "t": 7}])
    (record,) = records
    assert math.isnan(record["s"])  # missing float -> NaN, which tree ensembles read as missing
    assert record["m"] == [[1, 2], [3, 4]]
    assert record["t"] == "7"
    errors = _errors(lambda: validate_records(description, [{"s": [1, 2], "m": [[1, 2]], "t": None}]))
    assert [e["field"] for e in errors] == ["inputs[0].s", "inputs[0].m", "inputs[0].t"]
