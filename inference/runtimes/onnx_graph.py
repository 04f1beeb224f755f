"""ONNX graph rewriting: ZipMap outputs served from the float tensor they zip.

onnxruntime runs every node of a graph whatever is fetched, and its ZipMap builds one Python-visible map per
row: for 10,000 rows that costs as much as the rest of a random forest, for a logistic regression four times
more. The runtime serves a copy of the graph without those ZipMaps and rebuilds their maps (or answers
straight from the tensor), exactly as onnxruntime would have given them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import repeat
from operator import setitem
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

ZIPMAP_TYPES = frozenset({"seq(map(int64,float))", "seq(map(string,float))"})
"""A ZipMap's output: onnxruntime gives a list of dicts {int|str: float}."""


def fill(dicts: list[dict[str, Any]], key: str, values: Any) -> None:
    """`dicts[i][key] = values[i]` for every i, looped in C."""
    deque(map(setitem, dicts, repeat(key), values), maxlen=0)


@dataclass(frozen=True)
class ZipMapSource:
    """A ZipMap graph output rebuilt from the float tensor it zips (that tensor exposed as an extra output).

    onnxruntime builds the ZipMap's dicts with its keys in sorted order (a `std::map`), one float per class;
    `keys` are those keys as strings in that order and `columns` the tensor column of each.
    """

    tensor: str
    keys: list[str]
    columns: list[int]
    pairs: tuple[tuple[str, int], ...]
    """(key, column) in key order."""


def zipmap_sources(model: onnx.ModelProto) -> dict[str, ZipMapSource]:
    """Graph outputs made by a ZipMap of a computed float tensor, by output name (unique class labels only)."""
    outputs = {o.name for o in model.graph.output}
    graph_inputs = {i.name for i in model.graph.input}
    found: dict[str, ZipMapSource] = {}
    for node in model.graph.node:
        if node.op_type != "ZipMap" or node.domain != "ai.onnx.ml" or len(node.input) != 1 or len(node.output) != 1:
            continue
        if node.output[0] not in outputs or node.input[0] in outputs or node.input[0] in graph_inputs:
            continue
        attributes = {a.name: a for a in node.attribute}
        labels: list[Any]
        if "classlabels_int64s" in attributes and attributes["classlabels_int64s"].ints:
            labels = [int(v) for v in attributes["classlabels_int64s"].ints]
            order = sorted(range(len(labels)), key=lambda j: labels[j])
        elif "classlabels_strings" in attributes and attributes["classlabels_strings"].strings:
            labels = [v.decode("utf-8") for v in attributes["classlabels_strings"].strings]
            order = sorted(range(len(labels)), key=lambda j: labels[j].encode("utf-8"))
        else:
            continue
        if len(set(labels)) != len(labels):
            continue
        keys = [str(labels[j]) for j in order]
        found[node.output[0]] = ZipMapSource(node.input[0], keys, order, tuple(zip(keys, order, strict=True)))
    return found


def without_zipmaps(model: onnx.ModelProto, zipmaps: dict[str, ZipMapSource]) -> bytes:
    """The model, serialised, with each ZipMap's float tensor as a graph output in place of its maps.

    A ZipMap whose maps feed another node is kept.
    """
    consumed = {name for node in model.graph.node for name in node.input}
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    graph = pruned.graph
    drop = {name for name in zipmaps if name not in consumed}
    kept_nodes = [n for n in graph.node if not (n.op_type == "ZipMap" and n.output and n.output[0] in drop)]
    kept_outputs = [o for o in graph.output if o.name not in drop]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.output[:]
    graph.output.extend(kept_outputs)
    for source in zipmaps.values():
        graph.output.append(helper.make_tensor_value_info(source.tensor, TensorProto.FLOAT, None))
    return pruned.SerializeToString()  # type: ignore[no-any-return]


def zipmap_column(source: ZipMapSource, tensor: Any, size: int) -> list[dict[str, float]] | None:
    """What onnxruntime's ZipMap would give for `tensor`, keys already strings; None when it is not [size, C]."""
    if (
        type(tensor) is not np.ndarray
        or tensor.ndim != 2
        or tensor.shape != (size, len(source.keys))
        or tensor.dtype != np.float32
    ):
        return None
    if size == 1:
        row = tensor[0].tolist()
        return [{key: row[j] for key, j in source.pairs}]
    columns = tensor.T.tolist()
    maps: list[dict[str, float]] = [{} for _ in range(size)]
    for key, j in source.pairs:
        fill(maps, key, columns[j])
    return maps
