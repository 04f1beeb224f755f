"""The two PMML engines behind `PmmlRuntime`, both in the process' one JVM (see `inference.java`).

- `JpmmlEngine`: jpmml-evaluator through JPype. Batches go through its pickle-based `evaluateAll` (one
  call into Java per batch, no pandas). Its decoded results hold only the predicted label of a classifier
  whose PMML declares no probability outputs, so such models are evaluated record by record on the Java
  result objects instead (`HasProbability.getProbability(category)`).
- `PypmmlEngine`: pypmml (pmml4s) attached to the same JVM through its JPype gateway; batches go through
  its JSON "split" form (one call per batch, no pandas).

Each engine returns `EngineRow`s; `pmml.py` normalises them from the model's own description.
Long module: both bindings side by side, as they must return the same rows.
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import math
import pickle
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference import java
from inference.runtimes.pmml_fixes import RowCorrector
from inference.runtimes.pmml_schema import INTEGER_MISSING, PmmlSchema


class EngineError(Exception):
    """An engine could not load, verify or evaluate a model; the message is the engine's reason."""


@dataclass(slots=True)
class EngineRow:
    """One record's answer as an engine gave it."""

    values: dict[str, Any]
    """Every column the engine returned, JSON-ready (declared outputs under their PMML names)."""
    target: Any
    """Predicted value of the first target (the cluster id of a clustering model)."""
    distribution: dict[Any, float] | None = None
    """Class -> probability read from the engine's result object (when no output field carries it)."""


def _java_reason(exc: BaseException) -> str:
    # JPype exceptions: prefer "SimpleName: message"; JAXB wraps the SAX error as a linked exception.
    try:
        name = exc.getClass().getSimpleName()  # type: ignore[attr-defined]
        message = exc.getMessage()  # type: ignore[attr-defined]
        cause = exc.getCause() or getattr(exc, "getLinkedException", lambda: None)()  # type: ignore[attr-defined]
        if not message and cause is not None:
            message = cause.getMessage()
        text = f"{name}: {message}" if message else str(name)
    except Exception:
        text = str(exc)
    return text if len(text) <= 500 else text[:500] + "…"


def _jsonable(value: Any) -> Any:
    """Python value of an engine result: boxed Java numbers unboxed, containers converted."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return _from_java(value)


_PLAIN = frozenset({type(None), bool, int, float, str})
"""Types `_jsonable` returns as they are (unpickled results are plain Python; no boxed Java values)."""


def _jsonable_column(values: list[Any]) -> list[Any]:
    """`_jsonable` of each value; the list itself when every value is already plain (the usual case)."""
    if set(map(type, values)) <= _PLAIN:
        return values
    return [_jsonable(v) for v in values]


def _from_java(value: Any) -> Any:
    import jpype

    if isinstance(value, jpype.JClass("java.lang.Boolean")):
        return bool(value)
    if isinstance(value, (jpype.JClass("java.lang.Double"), jpype.JClass("java.lang.Float"))):
        return float(value)
    if isinstance(value, jpype.JClass("java.lang.Number")):
        return int(value)
    return str(value)


class _SafeUnpickler(pickle.Unpickler):
    # The pickles come from our own JVM (jpmml's pyrolite), never from users: plain data only, no globals.
    _ALLOWED = frozenset(
        {
            ("builtins", "set"),
            ("builtins", "frozenset"),
            ("__builtin__", "set"),
            ("datetime", "date"),
            ("datetime", "time"),
            ("datetime", "datetime"),
            ("decimal", "Decimal"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in engine results")


def _unpickle(data: bytes) -> Any:
    return _SafeUnpickler(io.BytesIO(data)).load()


def jpmml_version() -> str:
    """Version of the jpmml-evaluator Java library bundled by the Python package (else the package's)."""
    import jpmml_evaluator

    for jar in sorted(Path(jpmml_evaluator.__file__).parent.glob("dependencies/pmml-evaluator-*.jar")):
        try:
            with zipfile.ZipFile(jar) as archive:
                props = archive.read("META-INF/maven/org.jpmml/pmml-evaluator/pom.properties").decode()
        except (KeyError, OSError, zipfile.BadZipFile):
            continue
        for line in props.splitlines():
            if line.startswith("version="):
                return line.split("=", 1)[1].strip()
    return str(jpmml_evaluator.__version__)


def _declares_probabilities(schema: PmmlSchema) -> bool:
    declared = {spec.value for spec in schema.outputs if spec.feature == "probability" and spec.value is not None}
    return bool(schema.class_labels) and all(label in declared for label in schema.class_labels or [])


class JpmmlEngine:
    """jpmml-evaluator (JPype, in-process JVM): the fast engine, tried first."""

    implementation = "jpmml-evaluator"

    def __init__(self, data: bytes, schema: PmmlSchema) -> None:
        java.start_jvm()
        import jpype

        self.version = jpmml_version()
        self._schema = schema
        self._correct = RowCorrector(schema, "jpmml") if RowCorrector.needed(schema) else None
        # Its own verification compares uncorrected answers: corrected ones are verified by `pmml.verify`.
        self.verified = self._correct is None
        # Classifiers without declared probability outputs: read the distribution from the result objects.
        self._objects = schema.function_type == "classification" and not _declares_probabilities(schema)
        builder = jpype.JClass("org.jpmml.evaluator.LoadingModelEvaluatorBuilder")()
        stream = jpype.JClass("java.io.ByteArrayInputStream")(data)
        try:
            builder.load(stream)
            if self._objects:
                features = jpype.JClass("org.dmg.pmml.ResultFeature")
                builder.setExtraResultFeatures(jpype.JClass("java.util.EnumSet").of(features.PROBABILITY))
            evaluator = builder.build()
            if self.verified:
                evaluator.verify()  # the model's own <ModelVerification> records, where present
        except jpype.JException as exc:
            raise EngineError(_java_reason(exc)) from None
        self._evaluator: Any = evaluator
        self._inputs = [str(f.getName()) for f in evaluator.getInputFields()]
        targets = [f.getName() for f in evaluator.getTargetFields()]
        self._target: str | None = None if not targets or targets[0] is None else str(targets[0])
        self._target_column = self._target if self._target is not None else "cluster"
        self._result_columns: list[Any] | None = None
        """Result columns of `evaluateAll` (learnt on its first call), to complete single-record answers."""
        self._result_column_set: frozenset[Any] = frozenset()
        self._named_columns: list[tuple[str, Any]] = []
        self._java_exception: type[BaseException] = jpype.JException
        self._util: Any = jpype.JClass("org.jpmml.evaluator.python.PythonEvaluatorUtil")

    def evaluate(self, records: list[dict[str, Any]]) -> list[EngineRow]:
        """Evaluate a batch; raises `EngineError` naming the records the engine refused."""
        rows = self._evaluate(records)
        return rows if self._correct is None else self._correct(rows)

    def _evaluate(self, records: list[dict[str, Any]]) -> list[EngineRow]:
        if self._evaluator is None:
            raise EngineError("the model was unloaded")
        if self._objects:
            return self._evaluate_objects(records)
        if len(records) == 1:
            row = self._evaluate_one(records[0])
            if row is not None:
                return [row]
        import jpype

        payload = {"columns": self._inputs, "data": [[r.get(name) for r in records] for name in self._inputs]}
        try:
            packed = self._util.evaluateAll(self._evaluator, pickle.dumps(payload, protocol=2), None, 1)
        except jpype.JException as exc:
            raise EngineError(_java_reason(exc)) from None
        try:
            result = _unpickle(bytes(packed))
        except pickle.UnpicklingError as exc:
            raise EngineError(f"unreadable engine results: {exc}") from None
        errors = result.get("errors") or []
        failed = {i: str(error) for i, error in enumerate(errors) if error is not None}
        if failed:
            raise RecordErrors(failed)
        if self._result_columns is None:
            self._result_columns = list(result["columns"])
            self._result_column_set = frozenset(self._result_columns)
            named: dict[str, Any] = {}
            for column in self._result_columns:  # the first column of a name wins, as below
                named.setdefault("cluster" if column is None else str(column), column)
            self._named_columns = [(name, column) for name, column in named.items()]
        # A clustering model has no target field: jpmml names its cluster column None.
        columns = ["cluster" if c is None else str(c) for c in result["columns"]]
        # The first column of a name wins (as `setdefault` row by row would).
        first: dict[str, list[Any]] = {}
        for column, values in zip(columns, result["data"], strict=True):
            if column not in first:
                first[column] = _jsonable_column(values)
        names = list(first)
        target_index = names.index(self._target_column) if self._target_column in first else None
        rows_values = [dict(zip(names, row, strict=True)) for row in zip(*first.values(), strict=True)]
        if target_index is None:
            return [EngineRow(values=values, target=None) for values in rows_values]
        targets = first[names[target_index]]
        return [EngineRow(values=v, target=t) for v, t in zip(rows_values, targets, strict=True)]

    def _evaluate_one(self, record: dict[str, Any]) -> EngineRow | None:
        """One record through jpmml's single-record `evaluate` (faster than a 1-row `evaluateAll`).

        `evaluate` leaves out the columns it has no value for, where `evaluateAll` gives them as None: the
        answer is completed from the columns of the last `evaluateAll` call, so both give the same row.
        None when that is not known yet, or the engine refuses the record: the batch path then answers (and
        reports a refusal exactly as for a batch).
        """
        if self._result_columns is None:
            return None
        payload = pickle.dumps({name: record.get(name) for name in self._inputs}, protocol=2)
        try:
            packed = self._util.evaluate(self._evaluator, payload, None)
        except self._java_exception:
            return None
        try:
            result = _unpickle(bytes(packed))
        except pickle.UnpicklingError as exc:
            raise EngineError(f"unreadable engine results: {exc}") from None
        if not result.keys() <= self._result_column_set:
            return None
        values = {name: result.get(column) for name, column in self._named_columns}
        if not set(map(type, values.values())) <= _PLAIN:
            values = {name: _jsonable(value) for name, value in values.items()}
        return EngineRow(values=values, target=values.get(self._target_column))

    def _evaluate_objects(self, records: list[dict[str, Any]]) -> list[EngineRow]:
        import jpype

        hash_map = jpype.JClass("java.util.HashMap")
        has_probability = jpype.JClass("org.jpmml.evaluator.HasProbability")
        decode = jpype.JClass("org.jpmml.evaluator.EvaluatorUtil").decode
        rows: list[EngineRow] = []
        failed: dict[int, str] = {}
        for i, record in enumerate(records):
            arguments = hash_map()
            for name in self._inputs:
                arguments.put(name, record.get(name))
            try:
                results = self._evaluator.evaluate(arguments)
            except jpype.JException as exc:
                failed[i] = _java_reason(exc)
                continue
            values: dict[str, Any] = {}
            distribution = None
            for entry in results.entrySet():
                key, value = entry.getKey(), entry.getValue()
                if isinstance(value, has_probability):
                    distribution = {
                        _jsonable(category): float(value.getProbability(category)) for category in value.getCategories()
                    }
                values["cluster" if key is None else str(key)] = _jsonable(decode(value))
            target_column = self._target if self._target is not None else "cluster"
            rows.append(EngineRow(values=values, target=values.get(target_column), distribution=distribution))
        if failed:
            raise RecordErrors(failed)
        return rows

    def close(self) -> None:
        self._evaluator = None


class RecordErrors(EngineError):
    """Some records of a batch could not be evaluated: index -> the engine's reason."""

    def __init__(self, failed: dict[int, str]) -> None:
        super().__init__("; ".join(f"record {i}: {reason}" for i, reason in failed.items()))
        self.failed = failed


_pypmml_lock = threading.Lock()
_pypmml_attached = False


def _attach_pypmml() -> None:
    """Point pypmml at our JVM (its default would spawn a separate Py4J JVM per process)."""
    global _pypmml_attached
    with _pypmml_lock:
        if _pypmml_attached:
            return
        java.start_jvm()
        from pypmml.base import PMMLContext
        from pypmml.jvm import JPypeGateway

        class _SharedJvmGateway(JPypeGateway):  # type: ignore[misc]
            """pypmml's JPype gateway on the JVM `inference.java` started (it would start its own)."""

            def launch_gateway(self, java_opts: list[str] | None = None, java_path: str | None = None) -> None:
                return None

        if PMMLContext._gateway is None:
            PMMLContext(gateway_instance=_SharedJvmGateway())
        _pypmml_attached = True


class PypmmlEngine:
    """pypmml (pmml4s) on the shared JVM: the broader engine, used when jpmml-evaluator refuses a model."""

    implementation = "pypmml"

    def __init__(self, data: bytes, schema: PmmlSchema) -> None:
        _attach_pypmml()
        import pypmml
        from pypmml import Model

        self.version = str(pypmml.__version__)
        self._schema = schema
        self._correct = RowCorrector(schema, "pypmml") if RowCorrector.needed(schema) else None
        self.verified = False  # `pmml.verify` checks it against the model's records
        try:
            model = Model.fromBytes(data)
            # Adds predicted_<target> (and probability_<class> when no Output declares them).
            model.setSupplementOutput(True)
        except Exception as exc:
            raise EngineError(f"pypmml: {exc}") from None
        self._model: Any = model
        self._inputs = [str(name) for name in model.inputNames]
        target = schema.target
        self._target_column = f"predicted_{target.name}" if target is not None else None
        self._integer_target = target is not None and target.data_type == "integer"
        if schema.function_type == "classification" and not schema.class_labels:
            schema.class_labels = list(model.classes) or None

    def evaluate(self, records: list[dict[str, Any]]) -> list[EngineRow]:
        """Evaluate a batch in one call (JSON "split" form)."""
        rows = self._evaluate(records)
        return rows if self._correct is None else self._correct(rows)

    def _evaluate(self, records: list[dict[str, Any]]) -> list[EngineRow]:
        if self._model is None:
            raise EngineError("the model was unloaded")
        rows = [[_json_input(record.get(name)) for name in self._inputs] for record in records]
        try:
            answer = json.loads(str(self._model.predict(json.dumps({"columns": self._inputs, "data": rows}))))
        except Exception as exc:
            raise EngineError(f"pypmml: {exc}") from None
        columns = [str(c) for c in answer["columns"]]
        result = []
        for row in answer["data"]:
            values = dict(zip(columns, row, strict=True))
            target = values.get(self._target_column) if self._target_column else self._cluster(values)
            if self._integer_target and target == INTEGER_MISSING:
                target = None
            result.append(EngineRow(values=values, target=target))
        return result

    def _cluster(self, values: dict[str, Any]) -> Any:
        for spec in self._schema.outputs:
            if spec.feature in ("predictedValue", "entityId", "clusterId"):
                return values.get(spec.name)
        return values.get("cluster")

    def close(self) -> None:
        self._model = None


def _json_input(value: Any) -> Any:
    # NaN is how pandas users spell "missing"; JSON has no NaN and pmml4s reads null as missing.
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


ENGINES: dict[str, type[JpmmlEngine] | type[PypmmlEngine]] = {"jpmml": JpmmlEngine, "pypmml": PypmmlEngine}
"""Engine name -> class, in the order `auto` tries them (fastest first)."""
