"""The Open Inference Protocol (V2) codec: metadata, request decoding and response encoding, no HTTP."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from gateway.v2_codec import InferRequest, model_metadata, records_from_infer, server_metadata
from gateway.v2_outputs import infer_response
from inference.runtimes.base import ModelDescription
from inference.validation import validate_records
from shared.errors import ValidationFailed

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SPECIES = ["setosa", "versicolor", "virginica"]
ENGINE_ONNX = {"name": "onnx", "version": "1.20", "implementation": "onnxruntime"}
ENGINE_PMML = {"name": "pmml", "version": "1.6", "implementation": "jpmml-evaluator"}

ONNX_CLASSIFIER: dict[str, Any] = {
    "format": "onnx",
    "engine": ENGINE_ONNX,
    "algorithm": "LinearClassifier",
    "function_type": "classification",
    "inputs": [{"name": "X", "data_type": "float", "shape": [None, 4]}],
    "outputs": [
        {"name": "output_label", "data_type": "int64", "shape": [None], "required": False},
        {"name": "output_probability", "data_type": "seq(map(int64,float))", "shape": None, "required": False},
    ],
    "targets": [],
    "class_labels": [0, 1, 2],
}
PMML_IRIS: dict[str, Any] = {
    "format": "pmml",
    "engine": ENGINE_PMML,
    "algorithm": "TreeModel",
    "function_type": "classification",
    "inputs": [{"name": name, "data_type": "double", "op_type": "continuous"} for name in FEATURES],
    "outputs": [],
    "targets": [{"name": "species", "data_type": "string", "op_type": "categorical", "values": SPECIES}],
    "class_labels": SPECIES,
}
PMML_REGRESSION: dict[str, Any] = {
    "format": "pmml",
    "engine": ENGINE_PMML,
    "algorithm": "RegressionModel",
    "function_type": "regression",
    "inputs": [
        {"name": "age", "data_type": "integer"},
        {"name": "city", "data_type": "string", "op_type": "categorical", "values": ["Paris", "Lyon"]},
        {"name": "member", "data_type": "boolean"},
        {"name": "income", "data_type": "double"},
        {"name": "bonus", "data_type": "double", "required": False},
    ],
    "outputs": [],
    "targets": [{"name": "spend", "data_type": "double"}],
}
ONNX_KMEANS: dict[str, Any] = {
    "format": "onnx",
    "engine": ENGINE_ONNX,
    "algorithm": "KMeans",
    "function_type": "clustering",
    "inputs": [{"name": "X", "data_type": "float", "shape": [None, 4]}],
    "outputs": [
        {"name": "label", "data_type": "int64", "shape": [None]},
        {"name": "scores", "data_type": "float", "shape": [None, 3]},
    ],
}
PMML_CLUSTERS: dict[str, Any] = {
    "format": "pmml",
    "engine": ENGINE_PMML,
    "algorithm": "ClusteringModel",
    "function_type": "clustering",
    "inputs": [{"name": name, "data_type": "double"} for name in FEATURES],
}
ONNX_PCA: dict[str, Any] = {
    "format": "onnx",
    "engine": ENGINE_ONNX,
    "algorithm": "PCA",
    "function_type": "dimensionality_reduction",
    "inputs": [{"name": "X", "data_type": "float", "shape": ["N", 4]}],
    "outputs": [{"name": "variable", "data_type": "float", "shape": ["N", 2]}],
}
ONNX_NET: dict[str, Any] = {
    "format": "onnx",
    "engine": ENGINE_ONNX,
    "algorithm": "Gemm",
    "function_type": "other",
    "inputs": [
        {"name": "x", "data_type": "float", "shape": ["batch", 2, 2]},
        {"name": "steps", "data_type": "int64", "shape": [None, 1]},
    ],
    "outputs": [{"name": "y", "data_type": "float", "shape": [None, 3]}],
}
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]


def _iris_body(shape: list[int] | None = None) -> dict[str, Any]:
    """A PMML iris request: one [3] input per field, the three ROWS as the batch."""
    return {
        "inputs": [
            {"name": name, "shape": shape or [3], "datatype": "FP64", "data": [row[j] for row in ROWS]}
            for j, name in enumerate(FEATURES)
        ]
    }


def _errors(body: Any, model: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationFailed) as caught:
        records_from_infer(body, model)
    assert caught.value.status == 422
    assert caught.value.errors
    return caught.value.errors


def _fields(body: Any, model: dict[str, Any]) -> list[str]:
    return [error["field"] for error in _errors(body, model)]


# --- metadata ------------------------------------------------------------------------------------------------


def test_server_metadata() -> None:
    assert server_metadata("1.2.3") == {
        "name": "modelserve",
        "version": "1.2.3",
        "extensions": ["binary_tensor_data", "model_repository", "model_configuration", "statistics"],
    }


def test_onnx_classifier_metadata() -> None:
    meta = model_metadata("iris", 3, ONNX_CLASSIFIER)
    assert meta["name"] == "iris"
    assert meta["versions"] == ["3"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3], "parameters": {"classes": [0, 1, 2]}},
    ]
    json.dumps(meta)


def test_pmml_classifier_metadata_has_one_input_per_field() -> None:
    meta = model_metadata("iris", 1, PMML_IRIS)
    assert meta["platform"] == "pmml"
    assert meta["inputs"] == [{"name": name, "datatype": "FP64", "shape": [-1]} for name in FEATURES]
    assert meta["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [-1]}
    assert meta["outputs"][1]["parameters"] == {"classes": SPECIES}


def test_pmml_datatypes() -> None:
    meta = model_metadata("spend", 1, PMML_REGRESSION)
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("age", "INT64"),
        ("city", "BYTES"),
        ("member", "BOOL"),
        ("income", "FP64"),
        ("bonus", "FP64"),
    ]
    assert meta["outputs"] == [{"name": "value", "datatype": "FP64", "shape": [-1]}]


@pytest.mark.parametrize(
    ("model", "outputs"),
    [
        (
            ONNX_KMEANS,
            [
                {"name": "cluster", "datatype": "INT64", "shape": [-1]},
                {"name": "distances", "datatype": "FP64", "shape": [-1, 3]},
            ],
        ),
        (PMML_CLUSTERS, [{"name": "cluster", "datatype": "INT64", "shape": [-1]}]),
        (ONNX_PCA, [{"name": "components", "datatype": "FP64", "shape": [-1, 2]}]),
        (ONNX_NET, [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]),
    ],
)
def test_output_metadata_by_function_type(model: dict[str, Any], outputs: list[dict[str, Any]]) -> None:
    assert model_metadata("m", 1, model)["outputs"] == outputs


def test_dynamic_dimensions_are_minus_one() -> None:
    meta = model_metadata("net", 1, ONNX_NET)
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 2, 2]},
        {"name": "steps", "datatype": "INT64", "shape": [-1, 1]},
    ]
    assert model_metadata("pca", 1, ONNX_PCA)["inputs"][0]["shape"] == [-1, 4]


def test_non_tensor_outputs_are_not_listed() -> None:
    model = {**ONNX_CLASSIFIER, "function_type": "other"}
    assert [o["name"] for o in model_metadata("m", 1, model)["outputs"]] == ["output_label"]


# --- request decoding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [[v for row in ROWS for v in row], ROWS], ids=["flat", "nested"])
def test_onnx_batch_flat_or_nested(data: list[Any]) -> None:
    body = {"id": "r1", "inputs": [{"name": "X", "shape": [3, 4], "datatype": "FP32", "data": data}]}
    request = records_from_infer(body, ONNX_CLASSIFIER)
    assert request.id == "r1"
    assert request.records == [{"X": row} for row in ROWS]
    assert request.requested_outputs is None
    assert request.parameters == {}


def test_pmml_fields_become_scalars_in_batch_order() -> None:
    request = records_from_infer(_iris_body(), PMML_IRIS)
    assert request.records == [dict(zip(FEATURES, row, strict=True)) for row in ROWS]


@pytest.mark.parametrize("nested", [False, True])
def test_n_by_1_inputs_give_scalars(nested: bool) -> None:
    body = _iris_body([3, 1])
    if nested:
        for item in body["inputs"]:
            item["data"] = [[v] for v in item["data"]]
    request = records_from_infer(body, PMML_IRIS)
    assert request.records[2] == dict(zip(FEATURES, ROWS[2], strict=True))


def test_onnx_n_by_1_and_rank_3_inputs() -> None:
    body = {
        "inputs": [
            {"name": "x", "shape": [2, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]},
            {"name": "steps", "shape": [2, 1], "datatype": "INT64", "data": [[10], [20]]},
        ],
        "parameters": {"trace": True},
    }
    request = records_from_infer(body, ONNX_NET)
    assert request.records == [
        {"x": [[1.0, 2.0], [3.0, 4.0]], "steps": 10},
        {"x": [[5.0, 6.0], [7.0, 8.0]], "steps": 20},
    ]
    assert request.parameters == {"trace": True}
    assert all(isinstance(v, float) for r in request.records for row in r["x"] for v in row)


def test_pmml_types_nulls_and_optional_fields() -> None:
    body = {
        "inputs": [
            {"name": "age", "shape": [2], "datatype": "INT64", "data": [41, 7.0]},
            {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["Paris", None]},
            {"name": "member", "shape": [2], "datatype": "BOOL", "data": [True, False]},
            {"name": "income", "shape": [2], "datatype": "FP64", "data": [1000, 2500.5]},
        ]
    }
    records = records_from_infer(body, PMML_REGRESSION).records
    assert records == [
        {"age": 41, "city": "Paris", "member": True, "income": 1000.0, "bonus": None},
        {"age": 7, "city": None, "member": False, "income": 2500.5, "bonus": None},
    ]
    assert isinstance(records[1]["age"], int)
    assert isinstance(records[0]["income"], float)


def test_requested_outputs_are_decoded_in_order() -> None:
    body = {**_iris_body(), "outputs": [{"name": "probabilities"}, {"name": "label", "parameters": {"x": 1}}]}
    assert records_from_infer(body, PMML_IRIS).requested_outputs == ["probabilities", "label"]
    assert records_from_infer({**_iris_body(), "outputs": []}, PMML_IRIS).requested_outputs is None


def _iris_with(index: int, **changes: Any) -> dict[str, Any]:
    body = _iris_body()
    body["inputs"][index].update(changes)
    return body


def _onnx(**changes: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROWS[0], **changes}]}


@pytest.mark.parametrize(
    ("body", "model", "field"),
    [
        ([1, 2], PMML_IRIS, "body"),
        ({}, PMML_IRIS, "inputs"),
        ({"inputs": []}, PMML_IRIS, "inputs"),
        ({"inputs": {"X": ROWS}}, ONNX_CLASSIFIER, "inputs"),
        ({"inputs": ["X"]}, ONNX_CLASSIFIER, "inputs[0]"),
        ({"inputs": [{"shape": [1, 4], "datatype": "FP32", "data": ROWS[0]}]}, ONNX_CLASSIFIER, "inputs[0].name"),
        (_iris_with(1, name="sepal_lenght"), PMML_IRIS, "inputs[1].name"),
        (_iris_with(2, name=["petal_length"]), PMML_IRIS, "inputs[2].name"),
        (_onnx(datatype="BYTES"), ONNX_CLASSIFIER, "inputs[0].datatype"),
        (_onnx(datatype="BOOL"), ONNX_CLASSIFIER, "inputs[0].datatype"),
        (_onnx(datatype="FLOAT"), ONNX_CLASSIFIER, "inputs[0].datatype"),
        (_iris_with(3, datatype="BYTES"), PMML_IRIS, "inputs[3].datatype"),
        (_onnx(shape=[1, 3], data=ROWS[0][:3]), ONNX_CLASSIFIER, "inputs[0].shape"),
        (_onnx(shape=[4]), ONNX_CLASSIFIER, "inputs[0].shape"),
        (_onnx(shape="1x4"), ONNX_CLASSIFIER, "inputs[0].shape"),
        (_onnx(shape=[0, 4], data=[]), ONNX_CLASSIFIER, "inputs[0].shape"),
        (_iris_with(1, shape=[1, 3]), PMML_IRIS, "inputs[1].shape"),
        (_onnx(shape=[2, 4]), ONNX_CLASSIFIER, "inputs[0].data"),
        (_onnx(data=[[1, 2, 3], [4]]), ONNX_CLASSIFIER, "inputs[0].data"),
        (_onnx(data=[{"a": 1}, 2, 3, 4]), ONNX_CLASSIFIER, "inputs[0].data"),
        (_onnx(data="5.1,3.5,1.4,0.2"), ONNX_CLASSIFIER, "inputs[0].data"),
        (_iris_with(0, shape=[1], data=json.loads("[" * 900 + "1" + "]" * 900)), PMML_IRIS, "inputs[0].data"),
        (_onnx(data=None, parameters={"binary_data_size": 16}), ONNX_CLASSIFIER, "inputs[0].data"),
        (_onnx(data=[5.1, "3.5", 1.4, 0.2]), ONNX_CLASSIFIER, "inputs[0].data"),
        (_onnx(data=[5.1, True, 1.4, 0.2]), ONNX_CLASSIFIER, "inputs[0].data"),
        (_iris_with(2, data=[1.0, "long", 2.0]), PMML_IRIS, "inputs[2].data"),
        (_iris_with(0, shape=[2], data=[1.0, 2.0]), PMML_IRIS, "inputs[0].shape"),
        (_iris_with(3, shape=[2], data=[1.0, 2.0]), PMML_IRIS, "inputs[3].shape"),
        ({**_onnx(), "id": 42}, ONNX_CLASSIFIER, "id"),
        ({**_onnx(), "parameters": [1]}, ONNX_CLASSIFIER, "parameters"),
        ({**_onnx(), "outputs": "label"}, ONNX_CLASSIFIER, "outputs"),
        ({**_onnx(), "outputs": [{"name": "label"}, {"name": "proba"}]}, ONNX_CLASSIFIER, "outputs[1].name"),
        ({**_onnx(), "outputs": [{"name": "label"}, {"name": "label"}]}, ONNX_CLASSIFIER, "outputs[1].name"),
        (
            {**_onnx(), "outputs": [{"name": "label", "parameters": {"classification": 3}}]},
            ONNX_CLASSIFIER,
            "outputs[0].parameters.classification",
        ),
    ],
)
def test_bad_requests_name_the_field(body: Any, model: dict[str, Any], field: str) -> None:
    fields = _fields(body, model)
    assert fields[0] == field
    # An input that cannot be identified also leaves a model input missing: both are said.
    assert fields[1:] in ([], ["inputs"])
    assert fields[1:] == [] or field.endswith(("name", "]"))


def test_missing_and_duplicate_inputs() -> None:
    body = _iris_body()
    body["inputs"][3] = copy.deepcopy(body["inputs"][0])
    errors = _errors(body, PMML_IRIS)
    assert [e["field"] for e in errors] == ["inputs[3].name", "inputs"]
    assert errors[0]["message"] == "duplicate input"
    assert errors[1]["message"] == "missing input 'petal_width'"
    assert errors[1]["expected"] == "petal_width"


@pytest.mark.parametrize(
    ("datatype", "model", "value", "message"),
    [
        ("INT64", PMML_REGRESSION, 1.5, "expected an integer"),
        ("INT64", PMML_REGRESSION, "41", "expected a number"),
        ("BOOL", PMML_REGRESSION, "true", "expected true or false"),
        ("BYTES", PMML_REGRESSION, 3, "expected a string"),
        ("INT64", ONNX_NET, None, "null is not allowed"),
        ("INT64", ONNX_NET, 2**63, "out of range"),
    ],
)
def test_element_errors(datatype: str, model: dict[str, Any], value: Any, message: str) -> None:
    name = {"INT64": "age", "BOOL": "member", "BYTES": "city"}[datatype] if model is PMML_REGRESSION else "steps"
    body = {"inputs": [{"name": name, "shape": [2], "datatype": datatype, "data": [value, value]}]}
    error = next(e for e in _errors(body, model) if e["field"] == "inputs[0].data")
    assert error["message"].startswith(f"element 0: {message}")
    assert error["expected"] == datatype


def test_data_count_error_says_what_was_expected() -> None:
    (error,) = _errors(_onnx(shape=[2, 4]), ONNX_CLASSIFIER)
    assert error["expected"] == 8
    assert error["received"] == 4


def test_inconsistent_batch_size() -> None:
    body = {
        "inputs": [
            {"name": "x", "shape": [2, 2, 2], "datatype": "FP32", "data": list(range(8))},
            {"name": "steps", "shape": [3, 1], "datatype": "INT64", "data": [1, 2, 3]},
        ]
    }
    (error,) = _errors(body, ONNX_NET)
    assert error["field"] == "inputs[1].shape"
    assert (error["expected"], error["received"]) == (2, 3)


def test_every_error_is_reported_at_once() -> None:
    body = _iris_body()
    body["inputs"][0]["datatype"] = "BYTES"
    body["inputs"][2]["data"] = [1, 2]
    body["id"] = 7
    fields = _fields(body, PMML_IRIS)
    assert sorted(fields) == ["id", "inputs[0].datatype", "inputs[2].data"]


def test_dynamic_inner_dimension_accepts_any_size() -> None:
    model = {**ONNX_NET, "inputs": [{"name": "x", "data_type": "float", "shape": [None, None]}]}
    body = {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}
    assert records_from_infer(body, model).records == [{"x": [1.0, 2.0, 3.0, 4.0, 5.0]}]


# --- response encoding ---------------------------------------------------------------------------------------


def _request(n: int = 2, *, request_id: str | None = None, outputs: list[str] | None = None) -> InferRequest:
    return InferRequest(id=request_id, records=[{}] * n, requested_outputs=outputs)


ONNX_PREDICTIONS = [
    {"label": 0, "probabilities": {"2": 0.05, "0": 0.9, "1": 0.05}, "raw": {"output_label": 0}},
    {"label": 2, "probabilities": {"0": 0.1, "1": 0.2, "2": 0.7}, "raw": {"output_label": 2}},
]


def test_classification_response() -> None:
    response = infer_response("iris", 3, _request(), ONNX_PREDICTIONS, ONNX_CLASSIFIER)
    assert response == {
        "model_name": "iris",
        "model_version": "3",
        "outputs": [
            {"name": "label", "shape": [2], "datatype": "INT64", "data": [0, 2]},
            {
                "name": "probabilities",
                "shape": [2, 3],
                "datatype": "FP64",
                "parameters": {"classes": [0, 1, 2]},
                "data": [0.9, 0.05, 0.05, 0.1, 0.2, 0.7],
            },
        ],
    }
    json.dumps(response)


def test_string_labels_keep_the_class_order() -> None:
    predictions = [
        {"label": "virginica", "probabilities": {"virginica": 0.8, "setosa": 0.0, "versicolor": 0.2}},
        {"label": "setosa", "probabilities": {"setosa": 1.0, "versicolor": 0.0, "virginica": 0.0}},
    ]
    label, probabilities = infer_response("iris", 1, _request(), predictions, PMML_IRIS)["outputs"]
    assert label == {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["virginica", "setosa"]}
    assert probabilities["parameters"] == {"classes": SPECIES}
    assert probabilities["data"] == [0.0, 0.2, 0.8, 1.0, 0.0, 0.0]


def test_requested_outputs_filter_and_order_and_id_echo() -> None:
    request = _request(request_id="abc", outputs=["probabilities", "label"])
    response = infer_response("iris", 3, request, ONNX_PREDICTIONS, ONNX_CLASSIFIER)
    assert response["id"] == "abc"
    assert [o["name"] for o in response["outputs"]] == ["probabilities", "label"]
    only = infer_response("iris", 3, _request(outputs=["label"]), ONNX_PREDICTIONS, ONNX_CLASSIFIER)
    assert [o["name"] for o in only["outputs"]] == ["label"]
    assert "id" not in only


def test_unknown_requested_output_at_response_time() -> None:
    predictions = [{"label": 1, "probabilities": {}, "raw": {}}]
    with pytest.raises(ValidationFailed) as caught:
        infer_response("iris", 3, _request(1, outputs=["label", "probabilities"]), predictions, ONNX_CLASSIFIER)
    assert [e["field"] for e in caught.value.errors or []] == ["outputs[1].name"]
    response = infer_response("iris", 3, _request(1), predictions, ONNX_CLASSIFIER)
    assert [o["name"] for o in response["outputs"]] == ["label"]  # the model gave no probabilities


def test_missing_labels_are_nulls() -> None:
    predictions = [{"label": None, "probabilities": {}}, {"label": None, "probabilities": {}}]
    (label,) = infer_response("iris", 1, _request(), predictions, PMML_IRIS)["outputs"]
    assert label == {"name": "label", "shape": [2], "datatype": "BYTES", "data": [None, None]}


def test_regression_response() -> None:
    predictions = [{"value": 1.5, "raw": {"spend": 1.5}}, {"value": 2, "raw": {}}, {"value": None, "raw": {}}]
    (value,) = infer_response("spend", 2, _request(3), predictions, PMML_REGRESSION)["outputs"]
    assert value == {"name": "value", "shape": [3], "datatype": "FP64", "data": [1.5, 2.0, None]}


def test_clustering_response() -> None:
    predictions = [{"cluster": 2, "distances": [3.0, 1.0, 0.5], "raw": {}}, {"cluster": 0, "distances": [0, 1, 2]}]
    cluster, distances = infer_response("km", 1, _request(), predictions, ONNX_KMEANS)["outputs"]
    assert cluster == {"name": "cluster", "shape": [2], "datatype": "INT64", "data": [2, 0]}
    assert distances == {"name": "distances", "shape": [2, 3], "datatype": "FP64", "data": [3, 1, 0.5, 0, 1, 2]}
    assert all(isinstance(v, float) for v in distances["data"])


def test_pmml_cluster_ids_that_are_names_fall_back_to_bytes() -> None:
    predictions = [{"cluster": "c1", "affinities": [0.2, 0.9]}, {"cluster": "c2", "affinities": [0.7, 0.1]}]
    cluster, affinities = infer_response("km", 1, _request(), predictions, PMML_CLUSTERS)["outputs"]
    assert cluster["datatype"] == "BYTES"
    assert cluster["data"] == ["c1", "c2"]
    assert affinities["name"] == "affinities"
    assert affinities["shape"] == [2, 2]


def test_components_response() -> None:
    predictions = [{"components": [0.1, 0.2]}, {"components": [0.3, 0.4]}, {"components": [0.5, 0.6]}]
    (components,) = infer_response("pca", 1, _request(3), predictions, ONNX_PCA)["outputs"]
    assert components == {
        "name": "components",
        "shape": [3, 2],
        "datatype": "FP64",
        "data": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    }


def test_raw_tensors_for_other_models() -> None:
    predictions = [{"raw": {"y": [1.0, 2.0, 3.0]}}, {"raw": {"y": [4.0, 5.0, 6.0]}}]
    (y,) = infer_response("net", 1, _request(), predictions, ONNX_NET)["outputs"]
    assert y == {"name": "y", "shape": [2, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}


def test_raw_maps_are_left_out() -> None:
    model = {**ONNX_CLASSIFIER, "function_type": "other"}
    predictions = [
        {"raw": {"output_label": 1, "output_probability": {"0": 0.1, "1": 0.9}}},
        {"raw": {"output_label": 0, "output_probability": {"0": 0.8, "1": 0.2}}},
    ]
    (label,) = infer_response("m", 1, _request(), predictions, model)["outputs"]
    assert label == {"name": "output_label", "shape": [2], "datatype": "INT64", "data": [1, 0]}


# --- round trips ---------------------------------------------------------------------------------------------


def _fake_predict(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stands in for a runtime: class = argmax of the first three features."""
    answers = []
    for record in records:
        row = record["X"]
        scores = [row[k] / sum(row[:3]) for k in range(3)]
        label = max(range(3), key=scores.__getitem__)
        answers.append({"label": label, "probabilities": {str(k): p for k, p in enumerate(scores)}, "raw": {}})
    return answers


def test_round_trip_through_validation() -> None:
    body = {
        "id": "rt",
        "inputs": [{"name": "X", "shape": [3, 4], "datatype": "FP32", "data": ROWS}],
        "outputs": [{"name": "label"}, {"name": "probabilities"}],
    }
    request = records_from_infer(json.loads(json.dumps(body)), ONNX_CLASSIFIER)
    records, warnings = validate_records(ModelDescription.model_validate(ONNX_CLASSIFIER), request.records)
    assert warnings == []
    response = json.loads(json.dumps(infer_response("iris", 4, request, _fake_predict(records), ONNX_CLASSIFIER)))
    assert response["id"] == "rt"
    label, probabilities = response["outputs"]
    assert label["data"] == [0, 0, 0]
    assert probabilities["shape"] == [3, 3]
    assert probabilities["data"][:3] == pytest.approx([5.1 / 10.0, 3.5 / 10.0, 1.4 / 10.0])


def test_pmml_round_trip_through_validation() -> None:
    request = records_from_infer(_iris_body([3, 1]), PMML_IRIS)
    records, _ = validate_records(ModelDescription.model_validate(PMML_IRIS), request.records)
    assert records == [dict(zip(FEATURES, row, strict=True)) for row in ROWS]


def test_round_trip_with_a_real_onnx_runtime(tmp_path: Path) -> None:
    from inference.runtimes.onnx import load_onnx
    from shared.settings import Settings
    from tests.fixtures import models

    settings = Settings(environment="test", data_dir=tmp_path, log_json=False)
    runtime = load_onnx(models.make_onnx_logistic_regression(tmp_path), settings=settings)
    try:
        model = runtime.description.model_dump(mode="json")
        meta = model_metadata("iris", 1, model)
        assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
        body = {"inputs": [{"name": "X", "shape": [3, 4], "datatype": "FP32", "data": ROWS}]}
        request = records_from_infer(body, model)
        records, _ = validate_records(runtime.description, request.records)
        response = infer_response("iris", 1, request, runtime.predict(records), model)
        label, probabilities = response["outputs"]
        assert label == {"name": "label", "shape": [3], "datatype": "INT64", "data": [0, 1, 2]}
        assert probabilities["parameters"] == {"classes": [0, 1, 2]}
        assert probabilities["shape"] == [3, 3]
        rows = [probabilities["data"][i * 3 : i * 3 + 3] for i in range(3)]
        assert [max(range(3), key=row.__getitem__) for row in rows] == [0, 1, 2]
        assert meta["outputs"][0]["datatype"] == label["datatype"]
    finally:
        runtime.unload()


# --- numbers cast the way clients send them (issue 12, item 2) ------------------------------------------------

ONNX_INT64: dict[str, Any] = {
    "format": "onnx",
    "engine": ENGINE_ONNX,
    "function_type": None,
    "inputs": [{"name": "ids", "data_type": "int64", "shape": [None, 2]}],
    "outputs": [{"name": "y", "data_type": "float", "shape": [None, 1]}],
}
ONNX_INT32 = {**ONNX_INT64, "inputs": [{"name": "ids", "data_type": "int32", "shape": [None, 2]}]}


@pytest.mark.parametrize(
    ("model", "datatype", "data", "expected"),
    [
        (ONNX_CLASSIFIER, "FP64", [5.1, 3.5, 1.4, 0.2], [5.1, 3.5, 1.4, 0.2]),  # FP64 data into an FP32 input
        (ONNX_CLASSIFIER, "INT32", [5, 3, 1, 0], [5.0, 3.0, 1.0, 0.0]),  # integers into floats
        (ONNX_CLASSIFIER, "FP16", [5.0, 3.5, 1.5, 0.25], [5.0, 3.5, 1.5, 0.25]),
        (ONNX_INT64, "INT32", [7, -2, 3, 4], [7, -2, 3, 4]),  # widening
        (ONNX_INT64, "UINT8", [7, 2, 3, 255], [7, 2, 3, 255]),
        (ONNX_INT64, "FP32", [7.0, -2.0, 3.0, 4.0], [7, -2, 3, 4]),  # integral floats into integers
        (ONNX_INT32, "INT64", [2**31 - 1, -(2**31), 0, 1], [2**31 - 1, -(2**31), 0, 1]),  # narrowing that fits
    ],
)
def test_numbers_are_cast_to_the_input_type(
    model: dict[str, Any], datatype: str, data: list[Any], expected: list[Any]
) -> None:
    name = model["inputs"][0]["name"]
    body = {"inputs": [{"name": name, "shape": [2, 2] if len(data) == 4 and name == "ids" else [1, 4],
                        "datatype": datatype, "data": data}]}  # fmt: skip
    decoded = records_from_infer(body, model)
    flat = [v for record in decoded.records for row in record[name] for v in (row if isinstance(row, list) else [row])]
    assert flat == expected
    assert all(type(v) is type(e) for v, e in zip(flat, expected, strict=True))


def test_a_float32_frame_feeds_a_pmml_model_of_doubles() -> None:
    body = _iris_body()
    for item in body["inputs"]:
        item["datatype"] = "FP32"
    decoded = records_from_infer(body, PMML_IRIS)
    assert decoded.records[0] == dict(zip(FEATURES, ROWS[0], strict=True))


@pytest.mark.parametrize(
    ("model", "datatype", "data", "message"),
    [
        (ONNX_INT64, "FP64", [1.5, 2, 3, 4], "lose the fraction"),
        (ONNX_INT32, "INT64", [2**31, 0, 0, 0], "out of range for INT32"),
        (ONNX_INT64, "UINT64", [2**63, 0, 0, 0], "out of range for INT64"),
        (ONNX_CLASSIFIER, "FP64", [1e39, 0, 0, 0], "overflows FP32"),
        (ONNX_CLASSIFIER, "FP64", [0.5, float("nan"), -1e39, 0.0], "overflows FP32"),  # all floats: one pass
        (ONNX_CLASSIFIER, "INT64", [2**24 + 1, 0, 0, 0], "would lose the integer"),
        (ONNX_CLASSIFIER, "BOOL", [True, False, True, False], "datatype does not fit"),
    ],
)
def test_a_cast_that_loses_or_overflows_is_a_422_naming_the_field(
    model: dict[str, Any], datatype: str, data: list[Any], message: str
) -> None:
    name = model["inputs"][0]["name"]
    shape = [2, 2] if name == "ids" else [1, 4]
    errors = _errors({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}, model)
    assert errors[0]["field"] in ("inputs[0].data", "inputs[0].datatype")
    assert message in errors[0]["message"]
    assert errors[0]["expected"] == model_metadata("m", 1, model)["inputs"][0]["datatype"]


def test_infinities_and_nan_are_floats_not_overflows() -> None:
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP64", "data": [math.inf, -math.inf, 1.0, 2.0]}]}
    assert records_from_infer(body, ONNX_CLASSIFIER).records[0]["X"][:2] == [math.inf, -math.inf]


def test_an_exact_large_integer_still_fits_a_float() -> None:
    body = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "INT64", "data": [2**30, 2**24, 0, 1]}]}
    assert records_from_infer(body, ONNX_CLASSIFIER).records[0]["X"] == [2.0**30, 2.0**24, 0.0, 1.0]


def test_mlserver_pandas_codec_request_with_a_string_column() -> None:
    """The body MLServer's `PandasCodec.encode_request(df)` makes, as JSON (`model_dump_json`): one [N, 1] input
    per column, numpy's datatype, request parameters `content_type: pd`, strings as BYTES with `content_type: str`
    (codec source: mlserver/codecs/pandas.py, numpy.py, string.py)."""
    body = {
        "parameters": {"content_type": "pd"},
        "inputs": [
            {"name": "age", "shape": [2, 1], "datatype": "INT32", "data": [31, 45]},
            {"name": "city", "shape": [2, 1], "datatype": "BYTES", "data": ["Paris", "Lyon"],
             "parameters": {"content_type": "str"}},
            {"name": "member", "shape": [2, 1], "datatype": "BOOL", "data": [True, False]},
            {"name": "income", "shape": [2, 1], "datatype": "FP32", "data": [1000.5, 2500.25]},
        ],
    }  # fmt: skip
    decoded = records_from_infer(body, PMML_REGRESSION)
    assert decoded.records == [
        {"age": 31, "city": "Paris", "member": True, "income": 1000.5, "bonus": None},
        {"age": 45, "city": "Lyon", "member": False, "income": 2500.25, "bonus": None},
    ]
