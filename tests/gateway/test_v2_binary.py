"""The binary tensor data extension and content coding, checked against tritonclient's own encoders."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import deserialize_bytes_tensor

from gateway import v2_binary
from shared.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "INT8": np.array([[-128, 0, 127], [1, 2, 3]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [1, 2, 3]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, 2, 3]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [1, 2, 3]], dtype=np.int64),
    "UINT8": np.array([[0, 1, 255], [4, 5, 6]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [4, 5, 6]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [4, 5, 6]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [4, 5, 6]], dtype=np.uint64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [1, 2, 3]], dtype=np.float16),
    "FP32": np.array([[5.1, 3.5, -1.4], [0.2, 1e-30, 3e38]], dtype=np.float32),
    "FP64": np.array([[5.1, 3.5, -1.4], [0.2, 1e-300, 1e300]], dtype=np.float64),
    "BYTES": np.array([["setosa", "", "virginica"], ["é ü 中", "a" * 300, "x"]], dtype=np.object_),
}


def _client_bytes(datatype: str, array: np.ndarray) -> bytes:
    """The bytes tritonclient sends for this array (its InferInput with binary data on)."""
    tensor = httpclient.InferInput("t", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=True)
    raw = tensor._get_binary_data()
    assert raw is not None
    return bytes(raw)


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_every_datatype_round_trips_through_the_clients_encoding(datatype: str) -> None:
    array = SAMPLES[datatype]
    raw = _client_bytes(datatype, array)
    values = v2_binary.decode_tensor(raw, datatype, list(array.shape))
    expected = [v.decode() if isinstance(v, bytes) else v for v in array.flatten().tolist()]
    assert values == expected
    encoded = v2_binary.encode_tensor(values, datatype)
    assert encoded == raw  # our answer is byte for byte what the client itself would send
    if datatype == "BYTES":
        assert deserialize_bytes_tensor(encoded).tolist() == [v.encode() for v in expected]


def test_bf16_keeps_the_upper_half_of_a_float32() -> None:
    values = [1.0, -2.5, 0.15625, 3.0e38]
    raw = v2_binary.encode_tensor(values, "BF16")
    assert len(raw) == 8
    assert v2_binary.decode_tensor(raw, "BF16", [4])[:3] == [1.0, -2.5, 0.15625]


def test_missing_values_encode_as_nan_for_floats_and_refuse_elsewhere() -> None:
    raw = v2_binary.encode_tensor([1.0, None], "FP64")
    assert np.isnan(np.frombuffer(raw, "<f8")[1])
    for datatype in ("INT64", "BOOL", "BYTES"):
        with pytest.raises(v2_binary.Undecodable):
            v2_binary.encode_tensor([1, None], datatype)


@pytest.mark.parametrize(
    ("raw", "datatype", "shape", "message"),
    [
        (b"\x00" * 12, "FP32", [2, 2], "takes 16 bytes, got 12"),
        (b"\x02\x00", "BOOL", [2], "neither 0 nor 1"),
        (b"\x05\x00\x00\x00abc", "BYTES", [1], "only 3 remain"),
        (b"\x01\x00", "BYTES", [1], "cut short"),
        (b"\x02\x00\x00\x00\xff\xfe", "BYTES", [1], "not UTF-8"),
        (b"\x01\x00\x00\x00a\x01\x00\x00\x00b", "BYTES", [3], "has 2"),
        (b"\x00" * 4, "FLOAT", [1], "unknown datatype"),
    ],
)
def test_bytes_that_do_not_fit_say_why(raw: bytes, datatype: str, shape: list[int], message: str) -> None:
    with pytest.raises(v2_binary.Undecodable, match=message):
        v2_binary.decode_tensor(raw, datatype, shape)


def _binary_request(inputs: list[tuple[str, str, np.ndarray]], outputs: list[Any] | None = None) -> tuple[bytes, int]:
    """A request body as tritonclient builds it (its own request builder)."""
    tensors = []
    for name, datatype, array in inputs:
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(tensors, outputs=outputs)
    assert json_size is not None
    return body, json_size


def test_a_tritonclient_request_splits_into_json_with_data() -> None:
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    names = np.array([b"a", b"bc"], dtype=np.object_)
    body, size = _binary_request([("X", "FP32", x), ("n", "BYTES", names)])
    request = v2_binary.split_request(body, str(size))
    assert request["inputs"][0]["data"] == x.flatten().tolist()
    assert request["inputs"][1]["data"] == ["a", "bc"]
    assert "binary_data_size" not in request["inputs"][0].get("parameters", {})
    assert v2_binary.binary_outputs(request) == (True, {})  # no outputs named: tritonclient asks all binary


@pytest.mark.parametrize(
    ("header", "cut", "field"),
    [
        ("abc", 0, "headers.inference-header-content-length"),
        ("100000", 0, "headers.inference-header-content-length"),
        (None, 4, "inputs[0].parameters.binary_data_size"),
        (None, -4, "body"),
    ],
)
def test_bad_binary_requests_name_the_field(header: str | None, cut: int, field: str) -> None:
    body, size = _binary_request([("X", "FP32", np.ones((1, 4), dtype=np.float32))])
    body = body[:-cut] if cut > 0 else body + b"\x00" * -cut
    with pytest.raises(ValidationFailed) as caught:
        v2_binary.split_request(body, header or str(size))
    assert caught.value.errors is not None and caught.value.errors[0]["field"] == field


def test_a_wrong_sized_tensor_names_its_data() -> None:
    header = json.dumps(
        {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    ).encode()
    with pytest.raises(ValidationFailed) as caught:
        v2_binary.split_request(header + b"\x00" * 8, str(len(header)))
    assert caught.value.errors is not None and caught.value.errors[0]["field"] == "inputs[0].data"


def test_outputs_asked_binary_are_binary_and_tritonclient_reads_them() -> None:
    outputs = [httpclient.InferRequestedOutput("label", binary_data=True), httpclient.InferRequestedOutput("p", False)]
    body, size = _binary_request([("X", "FP32", np.ones((2, 4), dtype=np.float32))], outputs)
    request = v2_binary.split_request(body, str(size))
    default, chosen = v2_binary.binary_outputs(request)
    assert (default, chosen) == (False, {"label": True, "p": False})
    response = {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["setosa", "virginica"]},
            {"name": "p", "datatype": "FP64", "shape": [2, 2], "data": [0.25, 0.75, 1.0, 0.0]},
        ],
    }
    content, header_length = v2_binary.encode_response(response, default, chosen)
    assert header_length is not None and header_length < len(content)
    result = httpclient.InferResult.from_response_body(content, header_length=header_length)
    assert result.as_numpy("label").tolist() == [b"setosa", b"virginica"]
    assert result.as_numpy("p").tolist() == [[0.25, 0.75], [1.0, 0.0]]
    assert result.get_output("label")["parameters"]["binary_data_size"] == 4 + 6 + 4 + 9
    assert "data" in result.get_output("p")


def test_an_answer_nobody_asked_binary_is_plain_json() -> None:
    response = {"model_name": "m", "model_version": "1", "outputs": [{"name": "v", "datatype": "FP64", "shape": [1],
                "data": [1.5]}]}  # fmt: skip
    content, header_length = v2_binary.encode_response(response, False, {})
    assert header_length is None and json.loads(content)["outputs"][0]["data"] == [1.5]


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),  # what tritonclient sends for deflate (zlib-wrapped)
        ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, as some clients send
        ("identity", lambda b: b),
        (None, lambda b: b),
    ],
)
def test_request_content_codings_are_undone(encoding: str | None, compress: Any) -> None:
    body = b'{"inputs": []}' * 100
    assert v2_binary.decode_content(compress(body), encoding, limit=10_000) == body


def test_a_body_that_decompresses_past_the_limit_is_413_and_bad_codings_say_so() -> None:
    bomb = gzip.compress(b"\x00" * 1_000_000)
    with pytest.raises(PayloadTooLarge):
        v2_binary.decode_content(bomb, "gzip", limit=100_000)
    with pytest.raises(UnsupportedMediaType):
        v2_binary.decode_content(b"x", "br", limit=100)
    with pytest.raises(ValidationFailed) as caught:
        v2_binary.decode_content(b"not gzip", "gzip", limit=100)
    assert caught.value.errors is not None and caught.value.errors[0]["field"] == "body"


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("gzip, deflate", "gzip"),
        ("gzip;q=0, deflate", "deflate"),
        ("br", None),
        ("*", "gzip"),
        (None, None),
    ],
)
def test_accept_encoding(accept: str | None, chosen: str | None) -> None:
    assert v2_binary.accepted_encoding(accept) == chosen
    if chosen is not None:
        compressed = v2_binary.encode_content(b"abc" * 100, chosen)
        decoder = gzip.decompress if chosen == "gzip" else zlib.decompress
        assert decoder(compressed) == b"abc" * 100
