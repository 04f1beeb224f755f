"""How V2 tensor elements are checked against a model input's datatype: the casts clients expect.

A value that fits the input's type exactly or by the usual widening and narrowing of floats is accepted
(FP64 into FP32, INT32 into INT64, integers into floats, integral floats into integers); a cast that would
lose the fraction, the integer or overflow is refused (`Bad`, which the decoder turns into a 422 naming the
field). Pure functions, no I/O.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

INT_RANGES = {f"INT{b}": (-(2 ** (b - 1)), 2 ** (b - 1) - 1) for b in (8, 16, 32, 64)} | {
    f"UINT{b}": (0, 2**b - 1) for b in (8, 16, 32, 64)
}
FLOATS = frozenset({"FP16", "FP32", "FP64", "BF16"})
DATATYPES = frozenset(INT_RANGES) | FLOATS | {"BOOL", "BYTES"}


class Bad(Exception):
    """An element that does not fit the input's datatype; the message says why."""


def castable(received: Any, want: str) -> bool:
    """Whether data sent as `received` may feed an input of `want`: the casts clients expect (FP64 into FP32,
    INT32 into INT64, integers into floats, integral floats into integers); each element is checked after."""
    if received == want:
        return True
    numbers = FLOATS | frozenset(INT_RANGES)
    return received in numbers and want in numbers


_FLOAT_MAX = {"FP16": 65504.0, "BF16": 3.3895313892515355e38, "FP32": 3.4028234663852886e38}
_EXACT_INTS = {"FP16": 2**11, "BF16": 2**8, "FP32": 2**24, "FP64": 2**53}
"""Largest magnitude up to which every integer is exact in each float type."""


def element(value: Any, datatype: str, nullable: bool) -> Any:
    if value is None:
        if nullable or datatype in FLOATS:  # a missing value: PMML's own treatment, NaN for ONNX floats
            return None
        raise Bad("null is not allowed here")
    if datatype == "BYTES":
        if isinstance(value, str):
            return value
        raise Bad("expected a string")
    if datatype == "BOOL":
        if isinstance(value, bool):
            return value
        raise Bad("expected true or false")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Bad(f"expected a number ({datatype})")
    if datatype in FLOATS:
        if isinstance(value, int) and abs(value) > _EXACT_INTS[datatype] and _rounds(value, datatype):
            raise Bad(f"{value} is not exact in {datatype}: the cast would lose the integer")
        if math.isfinite(value) and abs(value) > _FLOAT_MAX.get(datatype, math.inf):
            raise Bad(f"{value} overflows {datatype}")
        return float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise Bad(f"expected an integer ({datatype}): the cast would lose the fraction")
        value = int(value)
    low, high = INT_RANGES[datatype]
    if not low <= value <= high:
        raise Bad(f"out of range for {datatype}")
    return value


def checked_at_once(data: list[Any], want: str) -> list[Any] | None:
    """`data` as `_element` would return it, checked by type in one pass when every element is of the common
    kind (floats for a float input, ints for an integer one); None when the slow per-element path must say why."""
    if want in FLOATS:
        if all(type(v) is float for v in data):
            limit = _FLOAT_MAX.get(want)
            if limit is not None and bool(np.any(np.abs(np.asarray(data, dtype=np.float64)) > limit)):
                return None  # an infinity is fine, an overflow is not: the element check tells them apart
            return data
        return None
    if want in INT_RANGES and data and all(type(v) is int for v in data):
        low, high = INT_RANGES[want]
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
