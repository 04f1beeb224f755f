"""PMML read by modelserve itself: the security check every file passes first, and the model's description.

No engine sees a PMML file before `parse_pmml` accepted it: a DOCTYPE (the carrier of external entities,
XXE, and of entity-expansion bombs) is refused outright, as PMML never needs one. The description comes
from the XML too, so it is the same whichever engine later serves the model.

Long module: one reading of a PMML document, element by element (fields, treatments, outputs, targets,
clusters, verification records), sharing the same namespace-blind element helpers.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException, DTDForbidden
from defusedxml import ElementTree as SafeET

from inference.runtimes.base import FieldSpec, FunctionType
from shared.errors import InvalidModel

MODEL_ELEMENTS = frozenset(
    {
        "AnomalyDetectionModel",
        "AssociationModel",
        "BayesianNetworkModel",
        "BaselineModel",
        "ClusteringModel",
        "GaussianProcessModel",
        "GeneralRegressionModel",
        "MiningModel",
        "NaiveBayesModel",
        "NearestNeighborModel",
        "NeuralNetwork",
        "RegressionModel",
        "RuleSetModel",
        "Scorecard",
        "SequenceModel",
        "SupportVectorMachineModel",
        "TextModel",
        "TimeSeriesModel",
        "TreeModel",
    }
)

# PMML `functionName` -> modelserve function type. PMML has no "dimensionality reduction" function: such a
# model is never inferred from a PMML file, and an uploader's override to it contradicts the functionName.
FUNCTION_NAMES: dict[str, FunctionType] = {
    "classification": "classification",
    "regression": "regression",
    "clustering": "clustering",
    "associationRules": "association_rules",
    "sequences": "sequences",
    "timeSeries": "time_series",
    "mixed": "mixed",
}

INTEGER_MISSING = -(2**63)
"""pmml4s reports a missing integer prediction as Long.MIN_VALUE."""


def local(tag: str) -> str:
    """Element name without its namespace (PMML 3.x, 4.x and odd `https://` URIs all read the same)."""
    return tag.rsplit("}", 1)[-1]


def children(element: Element, name: str) -> list[Element]:
    return [child for child in element if local(child.tag) == name]


def child(element: Element, name: str) -> Element | None:
    found = children(element, name)
    return found[0] if found else None


def typed(value: Any, data_type: str) -> Any:
    """A PMML value (text) as the Python value of its data type; unparseable text stays text."""
    if value is None or not isinstance(value, str):
        return value
    try:
        if data_type == "integer":
            number = float(value)
            return int(number) if number.is_integer() else number
        if data_type in ("float", "double"):
            return float(value)
        if data_type == "boolean":
            return {"true": True, "false": False, "1": True, "0": False}.get(value.strip().lower(), value)
    except ValueError:
        return value
    return value


def _is_doctype(exc: Exception) -> bool:
    return isinstance(exc, DTDForbidden) or "DOCTYPE" in str(exc)


def xml_root_name(data: bytes) -> str:
    """Name of the root element, read securely (DOCTYPE refused) and without parsing the rest."""
    try:
        for _event, element in SafeET.iterparse(io.BytesIO(data), events=("start",), forbid_dtd=True):
            return local(element.tag)
    except DefusedXmlException as exc:
        raise InvalidModel(_refusal(exc)) from None
    except ParseError as exc:
        raise InvalidModel(f"Not well-formed XML: {exc}") from None
    raise InvalidModel("XML without a root element")


def _refusal(exc: Exception) -> str:
    if _is_doctype(exc):
        return "DOCTYPE not allowed: PMML files may not declare a DTD or entities"
    return f"XML construct not allowed: {type(exc).__name__}"


def parse_pmml(data: bytes) -> Element:
    """Parse PMML bytes securely: no DTD, no entities, no external references. Raises `InvalidModel`."""
    if not data.strip():
        raise InvalidModel("Empty file")
    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise InvalidModel(_refusal(exc)) from None
    except ParseError as exc:
        raise InvalidModel(f"Not well-formed XML: {exc}") from None
    if local(root.tag) != "PMML":
        raise InvalidModel(f"XML root is <{local(root.tag)}>, expected <PMML>")
    return root


@dataclass
class OutputSpec:
    """One `<OutputField>`: what the engines return under its name."""

    name: str
    feature: str
    value: Any
    data_type: str
    target_field: str | None
    op_type: str | None = None


@dataclass
class Verification:
    """The model's own `<ModelVerification>` records: inputs and the outputs expected for them."""

    fields: dict[str, tuple[float, float]]
    """field name -> (precision, zeroThreshold)."""
    rows: list[dict[str, str]]


@dataclass
class PmmlSchema:
    """What `describe` learnt from the XML."""

    algorithm: str
    function_name: str
    function_type: FunctionType
    inputs: list[FieldSpec]
    targets: list[FieldSpec]
    outputs: list[OutputSpec]
    class_labels: list[Any] | None
    comparison_kind: str | None = None
    verification: Verification | None = None
    model_name: str | None = None
    data_types: dict[str, str] = field(default_factory=dict)
    cast_integer: str | None = None
    """round/ceiling/floor: the regression's target is an integer and its continuous result is cast so."""
    cox: bool = False
    """A Cox `GeneralRegressionModel`: its predicted value is the survival exp(-cumulative hazard)."""
    clusters: list[str] = field(default_factory=list)
    """Cluster ids of a `ClusteringModel`, in model order (the order of `distances`)."""

    @property
    def target(self) -> FieldSpec | None:
        return self.targets[0] if self.targets else None

    def allowed_function_types(self) -> set[FunctionType]:
        """Function types an uploader may declare: the inferred one and the one `functionName` names."""
        allowed: set[FunctionType] = {self.function_type}
        mapped = FUNCTION_NAMES.get(self.function_name)
        if mapped:
            allowed.add(mapped)
        return allowed


def _model_element(root: Element) -> Element:
    for element in root:
        if local(element.tag) in MODEL_ELEMENTS and element.get("isScorable", "true") != "false":
            return element
    raise InvalidModel("The PMML document holds no scorable model element")


def _data_fields(root: Element) -> dict[str, Element]:
    dictionary = child(root, "DataDictionary")
    if dictionary is None:
        raise InvalidModel("The PMML document has no DataDictionary")
    return {str(df.get("name")): df for df in children(dictionary, "DataField")}


def _derived_types(root: Element) -> dict[str, str]:
    dictionary = child(root, "TransformationDictionary")
    if dictionary is None:
        return {}
    return {str(df.get("name")): df.get("dataType", "string") for df in children(dictionary, "DerivedField")}


def _values(data_field: Element | None, data_type: str, prop: str) -> list[Any] | None:
    if data_field is None:
        return None
    found = [
        typed(value.get("value"), data_type)
        for value in children(data_field, "Value")
        if value.get("property", "valid") == prop
    ]
    return found or None


def _margin(text: str | None) -> float | None:
    if text is None:
        return None
    number = float(text)
    return None if math.isinf(number) else number


def _intervals(data_field: Element | None) -> list[dict[str, Any]] | None:
    if data_field is None:
        return None
    found = [
        {
            "closure": interval.get("closure", "closedClosed"),
            "left": _margin(interval.get("leftMargin")),
            "right": _margin(interval.get("rightMargin")),
        }
        for interval in children(data_field, "Interval")
    ]
    return found or None


def _handles_missing(mining_field: Element, model: Element) -> bool:
    """Whether the model says what a missing value of this field means (so an absent field is not an error).

    A replacement value, a `missingValueTreatment` other than returnInvalid, `invalidValueTreatment="asMissing"`
    (the model turns bad values into missing ones, so it takes missing ones) or a model-wide
    `missingValueStrategy` (trees) all do; a field without any declaration still has to be sent (a typo in a
    field name is then a 422, not a silently missing value), though null/NaN for it is accepted as missing.
    """
    if mining_field.get("missingValueReplacement") is not None:
        return True
    if mining_field.get("missingValueTreatment") not in (None, "returnInvalid"):
        return True
    if mining_field.get("invalidValueTreatment") == "asMissing":
        return True
    return model.get("missingValueStrategy") not in (None, "none")


def _field_spec(
    mining_field: Element, data_field: Element | None, data_type: str, target: bool, model: Element
) -> FieldSpec:
    op_type = mining_field.get("optype") or (data_field.get("optype") if data_field is not None else None)
    treatment = mining_field.get("invalidValueTreatment", "returnInvalid")
    multi_valued = not target and local(model.tag) == "AssociationModel"
    # PMML 4.4 renamed asIs to asValue (+ invalidValueReplacement): both hand the engine the value.
    return FieldSpec(
        name=str(mining_field.get("name")),
        data_type=data_type,
        op_type=op_type if op_type in ("continuous", "categorical", "ordinal") else None,  # type: ignore[arg-type]
        values=_item_values(model) if multi_valued else _values(data_field, data_type, "valid"),
        intervals=None if target else _intervals(data_field),
        missing_values=None if target else _values(data_field, data_type, "missing"),
        invalid_value_treatment=None if target else treatment,
        required=not target and not _handles_missing(mining_field, model),
        multi_valued=multi_valued,
    )


def _item_values(model: Element) -> list[Any] | None:
    """The items an `AssociationModel`'s rules know (a transaction may hold others: they match no rule)."""
    found = [item.get("value") for item in children(model, "Item") if item.get("value") is not None]
    return found or None


def _cast_integer(model: Element, target: FieldSpec | None, function_type: FunctionType) -> str | None:
    """How a regression's continuous result becomes the value of its integer target (None: not integer).

    A `<Target castInteger>` says round, ceiling or floor; without one the result is rounded to the nearest
    integer, which is what an integer data type means for a continuous value.
    """
    if target is None or target.data_type != "integer" or function_type != "regression":
        return None
    targets = child(model, "Targets")
    for declared in children(targets, "Target") if targets is not None else []:
        if declared.get("field") in (None, target.name) and declared.get("castInteger"):
            return str(declared.get("castInteger"))
    return "round"


def _cluster_ids(model: Element) -> list[str]:
    """Cluster ids in model order (`id`, else the 1-based position PMML gives a cluster without one)."""
    return [str(c.get("id") or i) for i, c in enumerate(children(model, "Cluster"), start=1)]


def _output_fields(model: Element) -> list[Element]:
    """The model's final output fields; a `modelChain` also exposes those of its last segment's model."""
    output = child(model, "Output")
    found = (
        [f for f in children(output, "OutputField") if f.get("isFinalResult", "true") != "false"]
        if output is not None
        else []
    )
    segmentation = child(model, "Segmentation")
    if segmentation is not None and segmentation.get("multipleModelMethod") == "modelChain":
        segments = children(segmentation, "Segment")
        last = next((e for e in segments[-1] if local(e.tag) in MODEL_ELEMENTS), None) if segments else None
        if last is not None:
            names = {f.get("name") for f in found}
            found += [f for f in _output_fields(last) if f.get("name") not in names]
    return found


def _outputs(model: Element, data_types: dict[str, str], target: FieldSpec | None) -> list[OutputSpec]:
    specs = []
    for output_field in _output_fields(model):
        feature = output_field.get("feature", "predictedValue")
        target_field = output_field.get("targetField")
        default_type = "double" if feature in ("probability", "affinity", "standardError", "residual") else "string"
        if feature == "predictedValue" and target is not None:
            default_type = data_types.get(target_field or target.name, target.data_type)
        data_type = output_field.get("dataType", default_type)
        value_type = target.data_type if (feature == "probability" and target is not None) else "string"
        specs.append(
            OutputSpec(
                name=str(output_field.get("name")),
                feature=feature,
                value=typed(output_field.get("value"), value_type),
                data_type=data_type,
                target_field=target_field,
                op_type=output_field.get("optype"),
            )
        )
    return specs


def _verification(model: Element) -> Verification | None:
    verification = child(model, "ModelVerification")
    if verification is None:
        return None
    columns: dict[str, str] = {}
    tolerances: dict[str, tuple[float, float]] = {}
    fields = child(verification, "VerificationFields")
    for vf in children(fields, "VerificationField") if fields is not None else []:
        name = str(vf.get("field"))
        columns[local(vf.get("column", name).split(":")[-1])] = name
        tolerances[name] = (float(vf.get("precision", "1E-6")), float(vf.get("zeroThreshold", "1E-16")))
    table = child(verification, "InlineTable")
    rows = []
    for row in children(table, "row") if table is not None else []:
        values = {}
        for cell in row:
            column = local(cell.tag)
            values[columns.get(column, column)] = (cell.text or "").strip()
        rows.append(values)
    return Verification(fields=tolerances, rows=rows) if rows else None


def describe_pmml(root: Element) -> PmmlSchema:
    """Describe a PMML document from its XML (DataDictionary, MiningSchema, Output, ModelVerification)."""
    try:
        return _describe(root)
    except (ValueError, TypeError, IndexError) as exc:  # e.g. a margin or precision that is not a number
        raise InvalidModel(f"Malformed PMML: {exc}") from None


def _describe(root: Element) -> PmmlSchema:
    model = _model_element(root)
    algorithm = local(model.tag)
    function_name = model.get("functionName", "")
    if algorithm == "AnomalyDetectionModel":
        function_type: FunctionType = "anomaly_detection"
    else:
        function_type = FUNCTION_NAMES.get(function_name, "other")
    data_fields = _data_fields(root)
    derived = _derived_types(root)
    schema = child(model, "MiningSchema")
    if schema is None:
        raise InvalidModel(f"The {algorithm} has no MiningSchema")
    inputs: list[FieldSpec] = []
    targets: list[FieldSpec] = []
    data_types: dict[str, str] = {}
    for mining_field in children(schema, "MiningField"):
        name = str(mining_field.get("name"))
        data_field = data_fields.get(name)
        if data_field is None and name not in derived:
            raise InvalidModel(f"MiningField {name!r} is not declared in the DataDictionary")
        data_type = data_field.get("dataType", "string") if data_field is not None else derived[name]
        data_types[name] = data_type
        usage = mining_field.get("usageType", "active")
        if usage in ("target", "predicted"):
            targets.append(_field_spec(mining_field, data_field, data_type, target=True, model=model))
        elif usage == "active":
            inputs.append(_field_spec(mining_field, data_field, data_type, target=False, model=model))
    target = targets[0] if targets else None
    outputs = _outputs(model, data_types, target)
    class_labels = target.values if (function_type == "classification" and target is not None) else None
    if function_type == "classification" and not class_labels:
        # No declared categories: the probability outputs still name the classes.
        class_labels = [spec.value for spec in outputs if spec.feature == "probability" and spec.value is not None]
        class_labels = class_labels or None
    measure = child(model, "ComparisonMeasure")
    return PmmlSchema(
        algorithm=algorithm,
        function_name=function_name,
        function_type=function_type,
        inputs=inputs,
        targets=targets,
        outputs=outputs,
        class_labels=class_labels,
        comparison_kind=measure.get("kind") if measure is not None else None,
        verification=_verification(model),
        model_name=model.get("modelName"),
        data_types=data_types,
        cast_integer=_cast_integer(model, target, function_type),
        cox=algorithm == "GeneralRegressionModel" and model.get("modelType") == "CoxRegression",
        clusters=_cluster_ids(model) if algorithm == "ClusteringModel" else [],
    )


def output_field_specs(schema: PmmlSchema) -> list[FieldSpec]:
    """The `<Output>` fields as `FieldSpec`s for the description."""
    return [
        FieldSpec(
            name=spec.name,
            data_type=spec.data_type,
            op_type=spec.op_type if spec.op_type in ("continuous", "categorical", "ordinal") else None,  # type: ignore[arg-type]
            required=False,
        )
        for spec in schema.outputs
    ]
