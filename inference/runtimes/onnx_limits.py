"""Size limits of an ONNX graph: what a tiny file may ask onnxruntime to allocate.

A 173-byte graph (`ConstantOfShape` of 20000×20000) allocates 1.6 GB on every call. At load, shape
inference with data propagation gives the size of every tensor whose shape is known from the graph alone
(dynamic dimensions count as 1, a lower bound); one above the limit refuses the file. At run time, outputs
above the per-call limit are refused before anyone serialises them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TypeProto, helper

from shared.errors import InvalidModel, PayloadTooLarge

logger = logging.getLogger("modelserve.runtimes.onnx")


def _tensor_bytes(type_proto: TypeProto) -> int | None:
    """Lower bound of a tensor value's size in bytes (dynamic dims as 1), None when unknown or not a tensor."""
    if type_proto.WhichOneof("value") != "tensor_type" or not type_proto.tensor_type.HasField("shape"):
        return None
    elem = type_proto.tensor_type.elem_type
    try:
        item = 8 if elem == onnx.TensorProto.STRING else np.dtype(helper.tensor_dtype_to_np_dtype(elem)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in type_proto.tensor_type.shape.dim]
    return item * math.prod(max(d, 0) for d in dims)


def _values(model: ModelProto) -> Iterator[onnx.ValueInfoProto]:
    graph = model.graph
    yield from graph.value_info
    yield from graph.output


def refuse_huge_tensors(model: ModelProto, limit: int) -> None:
    """`InvalidModel` when shape inference shows a tensor larger than `limit` bytes (0 disables the check).

    Graphs shape inference cannot handle (custom domains, unusual ops) are checked as far as it goes.
    """
    if limit <= 0:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference is best effort: the size checks at run time still apply
        logger.debug("ONNX shape inference failed, sizes unchecked at load: %s", exc)
        return
    for value in _values(inferred):
        size = _tensor_bytes(value.type)
        if size is not None and size > limit:
            raise InvalidModel(
                f"Tensor {value.name!r} of this graph would take at least {size:,} bytes per call, "
                f"above the limit of {limit:,} (setting onnx_max_tensor_bytes)"
            )


def check_output_bytes(names: list[str], outputs: list[Any], limit: int) -> None:
    """`PayloadTooLarge` when one call's tensor outputs together exceed `limit` bytes (0: no limit)."""
    if limit <= 0:
        return
    total = sum(value.nbytes for value in outputs if isinstance(value, np.ndarray))
    if total > limit:
        biggest = max(zip(names, outputs, strict=False), key=lambda p: getattr(p[1], "nbytes", 0))[0]
        raise PayloadTooLarge(
            f"The model's outputs for these inputs take {total:,} bytes (largest: {biggest!r}), above the "
            f"per-call limit of {limit:,} (setting onnx_max_output_bytes)"
        )
