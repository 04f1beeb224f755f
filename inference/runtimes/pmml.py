"""PMML runtime: one `PmmlRuntime` whichever engine (jpmml-evaluator or pypmml) serves the model.

Loading: the XML passes the security check and is described by `pmml_schema` before any engine sees it.
With `pmml_engine=auto` the fastest engine (jpmml-evaluator) is tried first; a model it refuses or that
fails its own `<ModelVerification>` records goes to pypmml (checked against the same records). Answers
are normalised from the XML's declarations, so they are the same whichever engine serves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inference.runtimes.base import NO_GC_ROWS, EngineInfo, FunctionType, ModelDescription, gc_paused_for
from inference.runtimes.pmml_crosscheck import GENERATED_RECORDS, cross_check, refusal_report
from inference.runtimes.pmml_engines import ENGINES, EngineError, EngineRow, JpmmlEngine, PypmmlEngine, RecordErrors
from inference.runtimes.pmml_fixes import INJECTED_PREFIX, engine_document
from inference.runtimes.pmml_schema import (
    PmmlSchema,
    describe_pmml,
    output_field_specs,
    parse_pmml,
    typed,
)
from shared.errors import InvalidModel, ModelServeError, ValidationFailed, field_error
from shared.settings import Settings

logger = logging.getLogger("modelserve.runtimes.pmml")

ENGINE_CHOICES = ("auto", "jpmml", "pypmml")


class PmmlRuntime:
    """A loaded PMML model; `description.engine.implementation` says which engine serves it."""

    def __init__(
        self,
        description: ModelDescription,
        schema: PmmlSchema,
        engine: JpmmlEngine | PypmmlEngine,
        *,
        injected: bool = False,
    ) -> None:
        self.description = description
        self._schema = schema
        """The description of the document the engine loaded (see `pmml_fixes`): answers are built from it."""
        self._engine: JpmmlEngine | PypmmlEngine | None = engine
        self._plan: _ClassificationPlan | None = None
        self._injected = injected
        # Fields that take a list of values per record (association items): one value is a list of one.
        self._multi_valued = [spec.name for spec in description.inputs if spec.multi_valued]

    @property
    def engine_name(self) -> str:
        """`jpmml` or `pypmml`."""
        return "jpmml" if isinstance(self._engine, JpmmlEngine) else "pypmml"

    def predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Evaluate the batch in one engine call and normalise each answer by function type."""
        if self._engine is None:
            raise ModelServeError("The model was unloaded")
        if not records:
            return []
        if len(records) < NO_GC_ROWS:  # the common small call skips the context manager's cost
            return self._predict(records)
        with gc_paused_for(len(records)):
            return self._predict(records)

    def _predict(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self._engine is not None
        if self._multi_valued:
            records = [_as_lists(record, self._multi_valued) for record in records]
        try:
            rows = self._engine.evaluate(records)
        except RecordErrors as exc:
            errors = [field_error(f"inputs[{i}]", reason) for i, reason in sorted(exc.failed.items())]
            raise ValidationFailed(f"The model could not evaluate {len(errors)} record(s)", errors=errors) from None
        except EngineError as exc:
            raise ModelServeError(f"PMML engine failed: {exc}") from None
        function_type = self.description.function_type
        if function_type == "classification":
            plan = self._plan
            if plan is None:
                plan = self._plan = _ClassificationPlan(self._schema)
            return plan.answers(rows)
        answers = [normalise(self._schema, function_type, row) for row in rows]
        if self._injected:  # our added outputs are in the answer's own fields, not among the engine's
            for answer in answers:
                answer["raw"] = {k: v for k, v in answer["raw"].items() if not k.startswith(INJECTED_PREFIX)}
        return answers

    def predict_columns(self, inputs: Mapping[str, Sequence[Any]]) -> None:
        """No columnar path: the engines evaluate records, so batch scoring takes the record path."""
        return None

    def unload(self) -> None:
        """Drop the engine's model (the JVM stays: it is shared and cannot be restarted)."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def load_pmml(
    path: Path,
    *,
    function_type: FunctionType | None = None,
    settings: Settings | None = None,
    engine: str | None = None,
) -> PmmlRuntime:
    """Load a PMML file. Raises `InvalidModel` (file refused) or `ValidationFailed` (bad override).

    With `auto`, every engine that loads the model (and reproduces its verification records) is tried on
    records generated from its schema; the runtime is bound to the one that is right (see
    `pmml_crosscheck`), and `description.engine.cross_check` reports how they compared.
    """
    data = path.read_bytes()
    schema = describe_pmml(parse_pmml(data))  # security check + description, before any engine
    resolved = resolve_function_type(schema, function_type)
    choice = engine or (settings.pmml_engine if settings is not None else "auto")
    if choice not in ENGINE_CHOICES:
        raise ValidationFailed(
            f"Unknown PMML engine {choice!r}",
            errors=[field_error("engine", "unknown PMML engine", expected=list(ENGINE_CHOICES), received=choice)],
        )
    names = list(ENGINES) if choice == "auto" else [choice]
    generated = settings.pmml_cross_check_records if settings is not None else GENERATED_RECORDS
    reasons: dict[str, str] = {}
    loaded: dict[str, PmmlRuntime] = {}
    for name in names:
        try:
            loaded[name] = _load_with(name, data, schema, resolved)
        except EngineError as exc:
            reasons[name] = str(exc)
            logger.info("PMML engine %s refused %s: %s", name, path.name, exc)
            continue
        if not generated:  # no cross-check: the first engine that loads and verifies serves
            break
    if not loaded:
        raise InvalidModel("No PMML engine can serve this model: " + "; ".join(f"{n}: {r}" for n, r in reasons.items()))
    if len(loaded) == 1:
        runtime = next(iter(loaded.values()))
        if reasons and generated:  # auto, and the other engine refused the model or its verification records
            runtime.description.engine.cross_check = refusal_report(schema, runtime, reasons)
        return runtime
    chosen, report = cross_check(schema, loaded, generated)
    for name, runtime in loaded.items():
        if name != chosen:
            runtime.unload()
    runtime = loaded[chosen]
    runtime.description.engine.cross_check = report
    if not report["agree"]:
        logger.warning(
            "PMML engines disagree on %s (%d differences); %s", path.name, len(report["differences"]), report["reason"]
        )
    return runtime


def _load_with(name: str, data: bytes, schema: PmmlSchema, function_type: FunctionType) -> PmmlRuntime:
    document = engine_document(data, schema, name)
    loaded = ENGINES[name](document.data, document.schema)
    if not loaded.verified:
        verify(loaded, document.schema)
    description = ModelDescription(
        format="pmml",
        engine=EngineInfo(name="pmml", version=loaded.version, implementation=loaded.implementation),
        algorithm=schema.algorithm,
        function_type=function_type,
        inputs=schema.inputs,
        outputs=output_field_specs(schema),
        targets=schema.targets,
        class_labels=document.schema.class_labels,  # pypmml names them when the file does not
    )
    return PmmlRuntime(description, document.schema, loaded, injected=document.injected)


def _as_lists(record: dict[str, Any], names: list[str]) -> dict[str, Any]:
    wrapped = dict(record)
    for name in names:
        value = wrapped.get(name)
        if value is not None and not isinstance(value, list | tuple):
            wrapped[name] = [value]
    return wrapped


def resolve_function_type(schema: PmmlSchema, declared: FunctionType | None) -> FunctionType:
    """The uploader's function type when the file agrees with it, else `ValidationFailed` on `function_type`."""
    if declared is None:
        return schema.function_type
    allowed = schema.allowed_function_types()
    if declared in allowed:
        return declared
    raise ValidationFailed(
        f"function_type {declared!r} contradicts the model: its {schema.algorithm} declares "
        f"functionName={schema.function_name!r}",
        errors=[
            field_error("function_type", "contradicts the model file", expected=sorted(allowed), received=declared)
        ],
    )


def coerce(value: Any, data_type: str) -> Any:
    """An engine's value as the Python type of the field's PMML data type (labels keep the model's type)."""
    if value is None:
        return None
    if isinstance(value, str):
        return typed(value, data_type)
    if data_type == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if data_type in ("float", "double") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if data_type == "string":
        return str(value)
    return value


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _probabilities(schema: PmmlSchema, row: EngineRow) -> dict[str, float]:
    target = schema.target
    data_type = target.data_type if target is not None else "string"
    found: dict[Any, float | None] = {}
    declared = [
        spec
        for spec in schema.outputs
        if spec.feature == "probability"
        and spec.value is not None
        and spec.target_field in (None, getattr(target, "name", None))
    ]
    if declared:
        found = {coerce(spec.value, data_type): _number(row.values.get(spec.name)) for spec in declared}
    elif row.distribution is not None:
        found = {coerce(cls, data_type): _number(p) for cls, p in row.distribution.items()}
        if found:  # jpmml leaves out the classes without a vote or probability (an SVM's losing class): 0
            found = {cls: found.get(cls, 0.0) for cls in schema.class_labels or []} | found
    else:
        # pypmml's supplementary outputs for a classifier without declared probabilities.
        found = {cls: _number(row.values.get(f"probability_{cls}")) for cls in schema.class_labels or []}
    order = list(schema.class_labels or []) + [cls for cls in found if cls not in (schema.class_labels or [])]
    return {str(cls): p for cls in order if (p := found.get(cls)) is not None}


class _ClassificationPlan:
    """`normalise` of a classifier's rows with what depends only on the schema worked out once.

    The probability keys of declared probability outputs, their order and the target's type are the
    same for every row; a row only contributes its values. Answers are the same as `normalise`'s.
    """

    def __init__(self, schema: PmmlSchema) -> None:
        self.schema = schema
        target = schema.target
        self.target_type = target.data_type if target is not None else "string"
        declared = [
            spec
            for spec in schema.outputs
            if spec.feature == "probability"
            and spec.value is not None
            and spec.target_field in (None, getattr(target, "name", None))
        ]
        # class -> output name, the last declaration of a class winning as in `_probabilities`' dict.
        by_class = {coerce(spec.value, self.target_type): spec.name for spec in declared}
        labels = list(schema.class_labels or [])
        order = labels + [cls for cls in by_class if cls not in labels]
        self.declared: list[tuple[str, str]] | None = (
            [(str(cls), by_class[cls]) for cls in order if cls in by_class] if declared else None
        )
        self.predicted_outputs = [spec.name for spec in schema.outputs if spec.feature == "predictedValue"]

    def answers(self, rows: list[EngineRow]) -> list[dict[str, Any]]:
        schema, target_type, declared, predicted_outputs = (
            self.schema,
            self.target_type,
            self.declared,
            self.predicted_outputs,
        )
        answers = []
        for row in rows:
            values = row.values
            predicted = row.target
            if predicted is None:
                for name in predicted_outputs:
                    if values.get(name) is not None:
                        predicted = values[name]
                        break
            label = predicted if type(predicted) is int and target_type == "integer" else coerce(predicted, target_type)
            if declared is None:
                answers.append({"label": label, "probabilities": _probabilities(schema, row), "raw": values})
                continue
            probabilities: dict[str, float] = {}
            for key, name in declared:
                p = values.get(name)
                if type(p) is not float:
                    p = _number(p)
                    if p is None:
                        continue
                probabilities[key] = p
            answers.append({"label": label, "probabilities": probabilities, "raw": values})
        return answers


def _cluster(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _predicted_value(schema: PmmlSchema, row: EngineRow) -> Any:
    if row.target is not None:
        return row.target
    for spec in schema.outputs:
        if spec.feature == "predictedValue" and row.values.get(spec.name) is not None:
            return row.values[spec.name]
    return None


def normalise(schema: PmmlSchema, function_type: FunctionType, row: EngineRow) -> dict[str, Any]:
    """One answer in modelserve's normalised form, built from the model's declarations (engine-agnostic)."""
    raw = row.values
    if function_type == "classification":
        target_type = schema.target.data_type if schema.target is not None else "string"
        label = coerce(_predicted_value(schema, row), target_type)
        return {"label": label, "probabilities": _probabilities(schema, row), "raw": raw}
    if function_type == "regression":
        value = _predicted_value(schema, row)
        if schema.cast_integer and type(value) is int:  # an integer target answers an integer
            return {"value": value, "raw": raw}
        return {"value": _number(value), "raw": raw}
    if function_type == "clustering":
        answer: dict[str, Any] = {"cluster": _cluster(_predicted_value(schema, row))}
        scores = [
            _number(row.values.get(spec.name))
            for spec in schema.outputs
            if spec.feature == "affinity" and spec.value is not None
        ]
        if scores:
            answer["distances" if schema.comparison_kind == "distance" else "affinities"] = scores
        answer["raw"] = raw
        return answer
    return {"raw": raw}


def _acceptable(expected: str, actual: Any, precision: float, zero: float) -> bool:
    # PMML's verification rule: relative precision, and anything below zeroThreshold counts as zero.
    if expected == "":
        return actual is None
    number, wanted = _number(actual), _number(expected)
    if number is not None and wanted is not None:
        if abs(wanted) <= zero:
            return abs(number) <= zero
        return abs(number - wanted) <= precision * abs(wanted)
    return str(actual) == expected or (isinstance(actual, bool) and str(actual).lower() == expected.lower())


def verify(engine: PypmmlEngine | JpmmlEngine, schema: PmmlSchema) -> None:
    """Check an engine against the model's `<ModelVerification>` records; raises `EngineError` on mismatch."""
    verification = schema.verification
    if verification is None:
        return
    inputs = {spec.name: spec.data_type for spec in schema.inputs}
    records = [{name: typed(row.get(name) or None, dt) for name, dt in inputs.items()} for row in verification.rows]
    results = engine.evaluate(records)
    outputs = {spec.name for spec in schema.outputs}
    targets = {spec.name for spec in schema.targets}
    for i, (row, result) in enumerate(zip(verification.rows, results, strict=True)):
        for name, expected in row.items():
            if name in outputs:
                actual = result.values.get(name)
            elif name in targets:
                actual = result.target
            else:
                continue  # an input, or a column the engine does not report
            precision, zero = verification.fields.get(name, (1e-6, 1e-16))
            if not _acceptable(expected, actual, precision, zero):
                raise EngineError(
                    f"{engine.implementation} disagrees with the model's verification record {i}: "
                    f"{name} expected {expected}, got {actual}"
                )
