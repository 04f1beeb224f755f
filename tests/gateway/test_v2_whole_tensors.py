"""V2 on ONNX graphs without a batch axis: whole tensors in, outputs exactly as onnxruntime gives them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.v2_codec import model_metadata, records_from_infer
from gateway.v2_outputs import infer_response
from shared.errors import ValidationFailed

GRAPH: dict[str, Any] = {
    "format": "onnx",
    "function_type": "other",
    "batched": False,
    "inputs": [
        {"name": "A", "data_type": "float", "shape": [2, 3]},
        {"name": "B", "data_type": "float", "shape": ["n"]},
    ],
    "outputs": [
        {"name": "total", "data_type": "float", "shape": []},
        {"name": "rows", "data_type": "float", "shape": [2]},
    ],
}


def _tensor(name: str, shape: list[int], data: list[Any], datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_metadata_reports_the_declared_dimensions_without_a_batch_axis() -> None:
    meta = model_metadata("g", 1, GRAPH)
    assert [i["shape"] for i in meta["inputs"]] == [[2, 3], [-1]]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"total": [], "rows": [2]}


def test_inputs_with_different_leading_dimensions_and_zero_length_are_one_record() -> None:
    request = records_from_infer({"inputs": [_tensor("A", [2, 3], [1, 2, 3, 4, 5, 6]), _tensor("B", [0], [])]}, GRAPH)
    assert request.records == [{"A": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "B": []}]
    five = records_from_infer({"inputs": [_tensor("A", [2, 3], [0] * 6), _tensor("B", [5], [1] * 5, "FP64")]}, GRAPH)
    assert five.records[0]["B"] == [1.0] * 5


def test_a_fixed_dimension_that_does_not_fit_is_a_422_naming_the_input() -> None:
    with pytest.raises(ValidationFailed) as caught:
        records_from_infer({"inputs": [_tensor("A", [3, 2], [0] * 6), _tensor("B", [1], [1])]}, GRAPH)
    assert caught.value.errors[0]["field"] == "inputs[0].shape"
    assert caught.value.errors[0]["expected"] == [2, 3]


def test_outputs_keep_the_shapes_the_runtime_gave_scalars_included() -> None:
    request = records_from_infer({"inputs": [_tensor("A", [2, 3], [1] * 6), _tensor("B", [1], [2])]}, GRAPH)
    answer = infer_response("g", 1, request, [{"raw": {"total": 8.0, "rows": [3.0, 3.0]}}], GRAPH)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["total"] == {"name": "total", "shape": [], "datatype": "FP32", "data": [8.0]}
    assert outputs["rows"]["shape"] == [2] and outputs["rows"]["data"] == [3.0, 3.0]
