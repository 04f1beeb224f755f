"""What an ONNX graph is: its inputs/outputs, algorithm, function type and class labels.

Read from the `ModelProto` alone (no session): `ai.onnx.ml` operators name the algorithm; outputs and a
few graph shapes (skl2onnx's KMeans and PCA have no ML operator) decide the function type.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto, TypeProto

from inference.runtimes.base import FieldSpec, FunctionType
from shared.errors import InvalidModel, ValidationFailed, field_error

PREDICTORS: dict[str, FunctionType | None] = {
    "TreeEnsembleClassifier": "classification",
    "TreeEnsembleRegressor": "regression",
    "TreeEnsemble": None,  # ai.onnx.ml v5: one op for both, the outputs tell
    "LinearClassifier": "classification",
    "LinearRegressor": "regression",
    "SVMClassifier": "classification",
    "SVMRegressor": "regression",
}
LABEL_TYPES = frozenset({TensorProto.INT64, TensorProto.INT32, TensorProto.STRING})
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16})
RAW_ONLY: frozenset[str] = frozenset(
    {"other", "anomaly_detection", "association_rules", "sequences", "time_series", "mixed"}
)


def elem_type_name(elem_type: int) -> str:
    """ONNX element type as a lower-case name: float, double, int64, string, bool…"""
    return str(TensorProto.DataType.Name(elem_type)).lower()


def type_name(type_proto: TypeProto) -> str:
    """Readable type of a graph value: the element type of a tensor, `seq(map(int64,float))` for a ZipMap."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return elem_type_name(type_proto.tensor_type.elem_type)
    if kind == "sequence_type":
        return f"seq({type_name(type_proto.sequence_type.elem_type)})"
    if kind == "map_type":
        key = elem_type_name(type_proto.map_type.key_type)
        return f"map({key},{type_name(type_proto.map_type.value_type)})"
    return kind or "unknown"


def shape_of(type_proto: TypeProto) -> list[int | str | None] | None:
    """Declared tensor shape: ints for fixed dims, the symbol (str) or None for dynamic ones."""
    if type_proto.WhichOneof("value") != "tensor_type" or not type_proto.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for dim in type_proto.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or None)
    return dims


def _graphs(graph: GraphProto) -> Iterator[GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _tensors(model: ModelProto) -> Iterator[TensorProto]:
    graphs = list(_graphs(model.graph))
    for graph in graphs:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
    nodes = [node for graph in graphs for node in graph.node]
    nodes += [node for function in model.functions for node in function.node]
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices


def refuse_external_data(model: ModelProto) -> None:
    """Refuse tensors stored outside the model file: loading them would read arbitrary server files."""
    external = [t.name or "(unnamed)" for t in _tensors(model) if t.data_location == TensorProto.EXTERNAL]
    if external:
        shown = ", ".join(external[:5]) + ("…" if len(external) > 5 else "")
        raise InvalidModel(
            f"External-data tensors are not allowed (the model must be one self-contained file): {shown}"
        )


@dataclass
class OutputRoles:
    """Which graph output plays which part in a normalised answer (None where the graph has none)."""

    label: str | None = None
    probabilities: str | None = None
    scores: str | None = None
    value: str | None = None
    components: str | None = None


def _rank2(shape: list[int | str | None] | None) -> bool:
    return shape is not None and len(shape) == 2


def _one_per_row(shape: list[int | str | None] | None) -> bool:
    return shape is None or len(shape) == 1 or (len(shape) == 2 and shape[1] in (1, None))


def output_roles(model: ModelProto) -> OutputRoles:
    roles = OutputRoles()
    for output in model.graph.output:
        kind = output.type.WhichOneof("value")
        shape = shape_of(output.type)
        elem = output.type.tensor_type.elem_type if kind == "tensor_type" else None
        if kind == "sequence_type" and roles.probabilities is None:
            roles.probabilities = output.name  # skl2onnx ZipMap: a list of {class: p}
        elif elem in LABEL_TYPES and roles.label is None and (shape is None or _one_per_row(shape)):
            roles.label = output.name
        elif elem in FLOAT_TYPES:
            if _rank2(shape) and roles.scores is None:
                roles.scores = output.name
            if _one_per_row(shape) and roles.value is None:
                roles.value = output.name
            if (shape is None or len(shape) >= 2) and roles.components is None:
                roles.components = output.name
    if roles.probabilities is None and roles.label is not None:
        roles.probabilities = roles.scores
    return roles


def _ops(model: ModelProto) -> list[str]:
    return [node.op_type for graph in _graphs(model.graph) for node in graph.node]


def _is_pca(model: ModelProto) -> bool:
    # skl2onnx PCA: (X - mean) @ components [/ sqrt(explained variance)]; nothing non-linear.
    ops = set(_ops(model))
    graph_inputs = {i.name for i in model.graph.input}
    centred = any(n.op_type == "Sub" and n.input and n.input[0] in graph_inputs for n in model.graph.node)
    return centred and "MatMul" in ops and ops <= {"Sub", "MatMul", "Div", "Mul", "Cast"}


def algorithm_and_function(model: ModelProto, roles: OutputRoles) -> tuple[str, FunctionType]:
    """Algorithm name and inferred function type of a graph."""
    ops = _ops(model)
    predictor = next((op for op in ops if op in PREDICTORS), None)
    float_outputs = [o for o in model.graph.output if o.type.tensor_type.elem_type in FLOAT_TYPES]
    if predictor is not None:
        declared = PREDICTORS[predictor]
        if declared == "classification" or (declared is None and roles.label and roles.probabilities):
            return predictor, "classification"
        return predictor, "regression" if roles.value else "other"
    if roles.label and roles.scores and "ArgMin" in ops:
        return "KMeans", "clustering"  # skl2onnx KMeans: distances to the centres, label = their argmin
    if len(model.graph.output) == 1 and float_outputs and _is_pca(model):
        return "PCA", "dimensionality_reduction"
    if roles.label and roles.probabilities:
        return "NeuralNetwork", "classification"  # e.g. skl2onnx MLPClassifier: ZipMap without an ML op
    return "NeuralNetwork", "other"


def class_labels(model: ModelProto) -> list[Any] | None:
    """Classes in probability-column order: ZipMap's labels, else the classifier operator's."""
    found: dict[str, list[Any]] = {}
    for graph in _graphs(model.graph):
        for node in graph.node:
            for attr in node.attribute:
                if attr.name in ("classlabels_int64s", "classlabels_ints", "classlabels_strings") and (
                    attr.ints or attr.strings
                ):
                    labels = [int(v) for v in attr.ints] or [s.decode("utf-8") for s in attr.strings]
                    found.setdefault(node.op_type, labels)
    if "ZipMap" in found:
        return found["ZipMap"]
    return next(iter(found.values()), None)


def compatible(function_type: FunctionType, roles: OutputRoles) -> bool:
    """Whether the graph's outputs can answer as `function_type`."""
    if function_type in RAW_ONLY:
        return True
    needs = {
        "classification": roles.label,
        "clustering": roles.label,
        "regression": roles.value,
        "dimensionality_reduction": roles.components,
    }
    return needs.get(function_type) is not None


def resolve_function_type(inferred: FunctionType, declared: FunctionType | None, roles: OutputRoles) -> FunctionType:
    """The uploader's function type if the outputs allow it, else `ValidationFailed` naming `function_type`."""
    if declared is None or declared == inferred:
        return inferred
    if compatible(declared, roles):
        return declared
    needs = {
        "classification": "a label output (int64/string tensor, one per row)",
        "clustering": "a cluster label output (int64 tensor, one per row)",
        "regression": "a float output with one value per row",
        "dimensionality_reduction": "a float [N, k] output",
    }[declared]
    raise ValidationFailed(
        f"function_type {declared!r} contradicts the model: it needs {needs}",
        errors=[field_error("function_type", f"the model has no {needs}", expected=inferred, received=declared)],
    )


def _leading(shape: list[int | str | None] | None) -> tuple[bool, str | None]:
    """(whether the leading dimension is dynamic, its symbol if it has one) of a declared tensor shape."""
    if not shape:
        return False, None
    first = shape[0]
    return not isinstance(first, int), first if isinstance(first, str) else None


def has_batch_axis(model: ModelProto) -> bool:
    """Whether records can be rows along a leading dimension every tensor input and output shares.

    True when every tensor input declares a rank of at least 1 with a dynamic leading dimension, all of one
    symbol (unnamed ones may be any), and no tensor output contradicts it (a scalar, a fixed leading
    dimension or another symbol; an output of unknown shape, such as a ZipMap's maps, does not). Anything
    else is served as it is: a record holds whole tensors and runs alone.
    """
    symbols: set[str] = set()
    tensors = [spec for spec in inputs_of(model) if "(" not in spec.data_type]
    if not tensors:
        return False
    for spec in tensors:
        dynamic, symbol = _leading(spec.shape)
        if not dynamic:
            return False
        symbols.update([symbol] if symbol else [])
    if len(symbols) > 1:
        return False
    for output in outputs_of(model):
        if output.shape is None or "(" in output.data_type:
            continue
        dynamic, symbol = _leading(output.shape)
        if not dynamic or (symbol and symbols and symbol not in symbols):
            return False
    return True


def inputs_of(model: ModelProto) -> list[FieldSpec]:
    initializers = {t.name for t in model.graph.initializer}
    return [
        FieldSpec(name=i.name, data_type=type_name(i.type), shape=shape_of(i.type))
        for i in model.graph.input
        if i.name not in initializers  # IR < 4 lists weights among the inputs
    ]


def outputs_of(model: ModelProto) -> list[FieldSpec]:
    return [
        FieldSpec(name=o.name, data_type=type_name(o.type), shape=shape_of(o.type), required=False)
        for o in model.graph.output
    ]


def parse_onnx(data: bytes) -> ModelProto:
    """Bytes -> ModelProto without loading external data; `InvalidModel` for anything else."""
    if not data:
        raise InvalidModel("Empty file")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidModel(f"Not a valid ONNX model (truncated or corrupt protobuf: {exc})") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise InvalidModel("Not a PMML or ONNX model (no ONNX graph in this file)")
    return model
