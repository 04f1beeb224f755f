"""The Open Inference Protocol's binary tensor data extension, and request/response compression.

A binary request is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw tensors,
in input order, each `parameters.binary_data_size` bytes: little-endian numbers, one byte per BOOL, and
BYTES elements as a 4-byte little-endian length then the bytes. Answers use the same layout for the
outputs the caller asked to receive binary. gRPC's `raw_input_contents`/`raw_output_contents` carry the
same per-tensor encoding, so both transports share `decode_tensor` and `encode_tensor`.

Pure functions, no I/O; bad input raises `ValidationFailed` naming the field.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

import numpy as np
import orjson

from shared.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed, field_error

HEADER = "Inference-Header-Content-Length"
_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # numpy has no bfloat16: the upper half of a float32
}
_FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})
_LENGTH = struct.Struct("<I")


class Undecodable(ValueError):
    """A tensor whose bytes do not fit its datatype and shape."""


def decode_tensor(raw: bytes, datatype: str, shape: list[int]) -> list[Any]:
    """The flat element list of one binary tensor (strings for BYTES); `Undecodable` says why not."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes(raw, count)
    dtype = _NUMPY.get(datatype)
    if dtype is None:
        raise Undecodable(f"unknown datatype {datatype!r}")
    if len(raw) != count * dtype.itemsize:
        raise Undecodable(f"shape {shape} of {datatype} takes {count * dtype.itemsize} bytes, got {len(raw)}")
    array = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL":
        if array.view(np.uint8).max(initial=0) > 1:
            raise Undecodable("a BOOL element is neither 0 nor 1")
    elif datatype == "BF16":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    values: list[Any] = array.tolist()
    return values


def _decode_bytes(raw: bytes, count: int) -> list[Any]:
    values: list[Any] = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise Undecodable("a BYTES element's 4-byte length is cut short")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise Undecodable(f"BYTES element {len(values)} says {length} bytes, only {end - offset} remain")
        try:
            values.append(raw[offset : offset + length].decode())
        except UnicodeDecodeError as exc:
            raise Undecodable(f"BYTES element {len(values)} is not UTF-8 text") from exc
        offset += length
    if len(values) != count:
        raise Undecodable(f"the shape holds {count} elements, the data has {len(values)}")
    return values


def encode_tensor(data: list[Any], datatype: str) -> bytes:
    """One output tensor's flat element list as binary; `Undecodable` if a missing value has no encoding."""
    if datatype == "BYTES":
        parts = []
        for value in data:
            if value is None:
                raise Undecodable("a missing BYTES element")
            encoded = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(encoded)) + encoded)
        return b"".join(parts)
    dtype = _NUMPY[datatype]
    if datatype in _FLOATS:
        values = [math.nan if v is None else v for v in data]
        if datatype == "BF16":
            return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        return np.asarray(values, dtype=dtype).tobytes()
    if any(v is None for v in data):
        raise Undecodable(f"a missing {datatype} element")
    return np.asarray(data, dtype=dtype).tobytes()


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The request body with its `Content-Encoding` (gzip, deflate, identity) undone, at most `limit` bytes."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    if name not in ("gzip", "x-gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported: send gzip, deflate or identity",
            errors=[field_error("headers.content-encoding", "unsupported", expected=["gzip", "deflate"])],
        )
    # deflate is zlib-wrapped per RFC 9110 (what tritonclient sends); some clients send it raw.
    attempts = [16 + zlib.MAX_WBITS] if name != "deflate" else [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"The request body decompresses to more than {limit} bytes")
        return out
    raise ValidationFailed(
        f"The request body is not valid {name} data",
        errors=[field_error("body", f"not valid {name} data", expected=name)],
    )


def accepted_encoding(accept: str | None) -> str | None:
    """gzip or deflate if the caller's `Accept-Encoding` takes it (gzip preferred), else None."""
    if not accept:
        return None
    offered: dict[str, float] = {}
    for part in accept.split(","):
        token, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        offered[token.strip().lower()] = quality
    for name in ("gzip", "deflate"):
        if offered.get(name, offered.get("*", 0.0)) > 0:
            return name
    return None


def encode_content(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return compressor.compress(body) + compressor.flush()
    return zlib.compress(body, 6)


def split_request(body: bytes, header_length: str | None) -> dict[str, Any]:
    """A V2 request body as JSON with every binary input's `data` filled in from the bytes after the header."""
    if header_length is None:
        return _json(body)
    try:
        size = int(header_length)
    except ValueError:
        size = -1
    if not 0 < size <= len(body):
        error = field_error(f"headers.{HEADER.lower()}", "not a length within the body", received=header_length)
        raise ValidationFailed(f"Invalid {HEADER}", errors=[error])
    request = _json(body[:size])
    binary = memoryview(body)[size:]
    inputs = request.get("inputs") if isinstance(request, dict) else None
    offset, errors = 0, []
    for i, item in enumerate(inputs if isinstance(inputs, list) else []):
        parameters = item.get("parameters") if isinstance(item, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        loc, length = f"inputs[{i}].parameters.binary_data_size", parameters.pop("binary_data_size")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0 or offset + length > len(binary):
            message = f"not a byte count within the {len(binary) - offset} binary bytes left"
            errors.append(field_error(loc, message, received=length))
            break
        raw = bytes(binary[offset : offset + length])
        offset += length
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            continue  # the JSON decoder names the bad shape
        try:
            item["data"] = decode_tensor(raw, str(item.get("datatype")), shape)
        except Undecodable as exc:
            errors.append(field_error(f"inputs[{i}].data", str(exc), expected=item.get("datatype")))
    if not errors and offset != len(binary):
        message = f"{len(binary) - offset} bytes after the header belong to no input"
        errors.append(field_error("body", message, expected=offset, received=len(binary)))
    if errors:
        raise ValidationFailed("Invalid binary tensor data: " + errors[0]["field"], errors=errors)
    return request


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed("Invalid JSON", errors=[field_error("body", f"not valid JSON: {exc}")]) from exc


def binary_outputs(request: Any) -> tuple[bool, dict[str, bool]]:
    """(all outputs binary by default, per-output choices) as the request asks them."""
    if not isinstance(request, dict):
        return False, {}
    parameters = request.get("parameters")
    default = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    chosen: dict[str, bool] = {}
    outputs = request.get("outputs")
    for item in outputs if isinstance(outputs, list) else []:
        params = item.get("parameters") if isinstance(item, dict) else None
        if (
            isinstance(params, dict)
            and isinstance(params.get("binary_data"), bool)
            and isinstance(item.get("name"), str)
        ):
            chosen[item["name"]] = params["binary_data"]
    return default, chosen


def encode_response(response: dict[str, Any], default: bool, chosen: dict[str, bool]) -> tuple[bytes, int | None]:
    """The answer's bytes and its JSON header's length (None: all JSON), outputs binary where asked."""
    blobs: list[bytes] = []
    for output in response.get("outputs", []):
        if not chosen.get(output["name"], default):
            continue
        try:
            raw = encode_tensor(output["data"], output["datatype"])
        except Undecodable:
            continue  # a missing value binary cannot carry: this output stays JSON (the protocol allows it)
        del output["data"]
        output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(raw)}
        blobs.append(raw)
    header = orjson.dumps(response)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
