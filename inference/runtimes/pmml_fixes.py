"""Where a PMML engine departs from the specification, and how its answers are brought back to it.

Every fix is decided once, from the XML, when a model loads; a model none applies to is served exactly as
before (no rewrite, no per-record work). Two kinds:

- **The document an engine loads** is rewritten into an equivalent one it evaluates right:
  - a `ClusteringModel` that declares no affinity outputs gets one per cluster (both engines), so every
    answer carries `distances`: jpmml's decoded result holds only the cluster id, pypmml's only the
    winner's distance;
  - jpmml-evaluator: an integer target of a regression becomes double (it fails with
    `TypeCheckException: Expected integer value, got double value` on any non-integral result), the cast
    to integer is then done by `RowCorrector` as the spec says (`castInteger`, rounding by default);
  - a binary SVM declared `OneAgainstAll` becomes `OneAgainstOne` (both engines): for one machine with
    an `alternateTargetCategory` the spec's binary rule applies whatever the method (f(x) < threshold
    gives the target category), where jpmml's one-against-all always answers the target category and
    pypmml's gives no probabilities.
- **An engine's rows** are corrected (`RowCorrector`): the integer cast (both engines; pypmml returns the
  continuous value), and jpmml's Cox regression, which returns the cumulative hazard H where the spec's
  predicted value is the survival exp(-H) (H stays in the answer as `cumHazard`).
"""

from __future__ import annotations

import copy
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from inference.runtimes.pmml_schema import (
    MODEL_ELEMENTS,
    PmmlSchema,
    child,
    children,
    describe_pmml,
    local,
    parse_pmml,
)

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

    from inference.runtimes.pmml_engines import EngineRow

INJECTED_PREFIX = "modelserve."
"""Names of the output fields modelserve adds to a document (left out of the answer's `raw`)."""
DISTANCE_OUTPUT = INJECTED_PREFIX + "distance"
CLUSTER_OUTPUT = INJECTED_PREFIX + "cluster"


@dataclass
class EngineDocument:
    """What one engine loads: the (possibly rewritten) PMML and its description."""

    data: bytes
    schema: PmmlSchema
    """Described from `data`, with the original's spec facts (integer cast, Cox) kept."""
    changes: list[str] = field(default_factory=list)
    """What was rewritten, in words (empty: the uploaded file as it is)."""

    @property
    def injected(self) -> bool:
        return any(spec.name.startswith(INJECTED_PREFIX) for spec in self.schema.outputs)


def _model(root: Element) -> Element:
    for element in root:
        if local(element.tag) in MODEL_ELEMENTS and element.get("isScorable", "true") != "false":
            return element
    raise AssertionError("describe_pmml accepted a document without a model")  # pragma: no cover


def _namespace(element: Element) -> str:
    return element.tag[: -len(local(element.tag))]


def _output(model: Element) -> Element:
    """The model's `<Output>`, created right after its `<MiningSchema>` (where PMML puts it) when absent."""
    output = child(model, "Output")
    if output is not None:
        return output
    output = ET.Element(_namespace(model) + "Output")
    position = next(i for i, e in enumerate(model) if local(e.tag) == "MiningSchema") + 1
    model.insert(position, output)
    return output


def _inject_distances(model: Element, schema: PmmlSchema) -> str:
    output = _output(model)
    ns = _namespace(model)
    for cluster in schema.clusters:
        attributes = {
            "name": f"{DISTANCE_OUTPUT}({cluster})",
            "optype": "continuous",
            "dataType": "double",
            "feature": "affinity",
            "value": cluster,
        }
        ET.SubElement(output, ns + "OutputField", attributes)
    if not any(spec.feature in ("predictedValue", "entityId", "clusterId") for spec in schema.outputs):
        # With an <Output>, pypmml reports the cluster only through a declared field.
        attributes = {"name": CLUSTER_OUTPUT, "optype": "categorical", "dataType": "string"}
        ET.SubElement(output, ns + "OutputField", {**attributes, "feature": "predictedValue"})
    return f"added an affinity output per cluster ({len(schema.clusters)})"


def _double_integer_target(root: Element, model: Element, schema: PmmlSchema) -> str:
    target = schema.target
    assert target is not None
    dictionary = child(root, "DataDictionary")
    for data_field in children(dictionary, "DataField") if dictionary is not None else []:
        if data_field.get("name") == target.name:
            data_field.set("dataType", "double")
    output = child(model, "Output")
    for output_field in children(output, "OutputField") if output is not None else []:
        predicted = output_field.get("feature", "predictedValue") == "predictedValue"
        if predicted and output_field.get("dataType") == "integer":
            output_field.set("dataType", "double")
    return f"integer target {target.name!r} evaluated as double, then cast ({schema.cast_integer})"


def _binary_one_against_one(model: Element) -> str | None:
    machines = children(model, "SupportVectorMachine")
    if (
        local(model.tag) == "SupportVectorMachineModel"
        and model.get("classificationMethod") == "OneAgainstAll"
        and len(machines) == 1
        and machines[0].get("alternateTargetCategory") is not None
    ):
        model.set("classificationMethod", "OneAgainstOne")
        return "binary SVM evaluated with the binary rule (OneAgainstAll read as OneAgainstOne)"
    return None


def engine_document(data: bytes, schema: PmmlSchema, engine: str) -> EngineDocument:
    """The document `engine` ("jpmml" or "pypmml") should load for the model `data` describes as `schema`."""
    needs_distances = (
        schema.algorithm == "ClusteringModel"
        and bool(schema.clusters)
        and not any(spec.feature == "affinity" for spec in schema.outputs)
    )
    jpmml = engine == "jpmml"
    maybe_svm = schema.algorithm == "SupportVectorMachineModel"
    if not (needs_distances or (jpmml and schema.cast_integer) or maybe_svm):
        # A copy: an engine may complete its schema (pypmml: the class labels), never the other engine's.
        return EngineDocument(data=data, schema=copy.copy(schema))
    root = parse_pmml(data)
    model = _model(root)
    changes: list[str] = []
    if needs_distances:
        changes.append(_inject_distances(model, schema))
    if jpmml and schema.cast_integer:
        changes.append(_double_integer_target(root, model, schema))
    if maybe_svm and (change := _binary_one_against_one(model)):
        changes.append(change)
    if not changes:
        return EngineDocument(data=data, schema=copy.copy(schema))
    rewritten = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    described = describe_pmml(parse_pmml(rewritten))
    described.cast_integer, described.cox = schema.cast_integer, schema.cox
    described.class_labels = schema.class_labels
    return EngineDocument(data=rewritten, schema=described, changes=changes)


def _cast(value: Any, how: str) -> Any:
    if not isinstance(value, float):
        return value  # None, or already an integer
    if math.isnan(value) or math.isinf(value):
        return None
    value = round(value, 9)  # the engines' float noise (1.2 - 2.7 = -1.5000000000000002) must not move a cast
    if how == "ceiling":
        return math.ceil(value)
    if how == "floor":
        return math.floor(value)
    return math.floor(value + 0.5)  # round half up, as Java's Math.round (the engines' platform) does


class RowCorrector:
    """The per-row corrections an engine's answers need for one model (see the module docstring)."""

    def __init__(self, schema: PmmlSchema, engine: str) -> None:
        target = schema.target
        self.cast = schema.cast_integer
        self.cox_hazard = schema.cox and engine == "jpmml"
        self.cox = schema.cox
        names = {spec.name for spec in schema.outputs if spec.feature == "predictedValue"}
        if target is not None:
            names |= {target.name, f"predicted_{target.name}"}
        self.predicted = sorted(names)

    @staticmethod
    def needed(schema: PmmlSchema) -> bool:
        return bool(schema.cast_integer) or schema.cox

    def __call__(self, rows: list[EngineRow]) -> list[EngineRow]:
        for row in rows:
            values = row.values
            if self.cox:
                if self.cox_hazard:
                    hazard = row.target
                    survival = None if hazard is None else math.exp(-float(hazard))
                else:
                    survival = row.target
                    hazard = None if survival is None or survival <= 0 else 0.0 - math.log(float(survival))
                row.target = survival
                for name in self.predicted:
                    if name in values:
                        values[name] = survival
                values["cumHazard"] = hazard
            if self.cast:
                row.target = _cast(row.target, self.cast)
                for name in self.predicted:
                    if name in values:
                        values[name] = _cast(values[name], self.cast)
        return rows
