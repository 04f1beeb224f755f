"""PMML runtime: description from the XML, engine choice and fallback, normalised answers, security walls."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference import java
from inference.runtimes import Runtime, detect_format, load_runtime
from inference.runtimes import pmml_engines as engines
from inference.runtimes.pmml_engines import EngineError, JpmmlEngine, PypmmlEngine
from inference.runtimes.pmml_schema import describe_pmml, parse_pmml
from shared.errors import InvalidModel, ModelServeError, ValidationFailed
from shared.settings import Settings
from tests.fixtures import models
from tests.fixtures.pmml_texts import TREE_EXPECTED, glm_income

IRIS = models.FEATURES
GLM_INPUTS = ["age", "work", "hours"]

# name -> (algorithm, function type, input names (None: a subset of the iris features), class labels)
EXPECTED: dict[str, tuple[str, str, list[str] | None, list[Any] | None]] = {
    "logistic_regression": ("RegressionModel", "classification", IRIS, [0, 1, 2]),
    "decision_tree": ("TreeModel", "classification", None, models.SPECIES),
    "random_forest": ("MiningModel", "classification", None, [0, 1, 2]),
    "gradient_boosting": ("MiningModel", "classification", None, [0, 1, 2]),
    "mlp": ("NeuralNetwork", "classification", IRIS, [0, 1, 2]),
    "kmeans": ("ClusteringModel", "clustering", IRIS, None),
    "linear_regression": ("RegressionModel", "regression", models.REGRESSION_FEATURES, None),
    "random_forest_regressor": ("MiningModel", "regression", None, None),
    "gradient_boosting_regressor": ("MiningModel", "regression", None, None),
    "general_regression": ("GeneralRegressionModel", "regression", GLM_INPUTS, None),
    "https_namespace": ("GeneralRegressionModel", "regression", GLM_INPUTS, None),
    "tree_without_output": ("TreeModel", "classification", ["temperature", "outlook"], ["yes", "no"]),
    "anomaly_detection": ("AnomalyDetectionModel", "anomaly_detection", ["x1", "x2"], None),
}
ENGINE_CASES = [
    (name, engine)
    for name in EXPECTED
    for engine in ("jpmml", "pypmml")
    if not (engine == "jpmml" and name in models.JPMML_REFUSES)
]


def test_every_fixture_has_expectations(pmml_models: dict[str, Path]) -> None:
    assert set(pmml_models) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_describe_with_auto_engine(name: str, pmml_models: dict[str, Path], runtime_settings: Settings) -> None:
    runtime = load_runtime(pmml_models[name], runtime_settings)
    algorithm, function_type, inputs, labels = EXPECTED[name]
    description = runtime.description
    assert isinstance(runtime, Runtime)
    assert description.format == "pmml"
    assert description.engine.name == "pmml"
    expected_engine = "pypmml" if name in models.JPMML_REFUSES else "jpmml-evaluator"
    assert description.engine.implementation == expected_engine
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", description.engine.version)
    assert description.algorithm == algorithm
    assert description.function_type == function_type
    names = [spec.name for spec in description.inputs]
    if inputs is None:
        assert names and set(names) <= set(IRIS)
    else:
        assert names == inputs
    assert description.class_labels == labels
    if labels is not None:
        assert description.targets[0].values == labels


def test_iris_inputs_are_doubles(pmml_models: dict[str, Path], runtime_settings: Settings) -> None:
    description = load_runtime(pmml_models["logistic_regression"], runtime_settings).description
    assert {(s.data_type, s.op_type, s.required) for s in description.inputs} == {("double", "continuous", True)}
    assert [t.name for t in description.targets] == ["species"]
    assert description.targets[0].data_type == "integer"
    assert [o.name for o in description.outputs] == ["probability(0)", "probability(1)", "probability(2)"]


def test_describe_reads_intervals_values_and_treatments(pmml_models: dict[str, Path]) -> None:
    schema = describe_pmml(parse_pmml(pmml_models["general_regression"].read_bytes()))
    age, work, hours = schema.inputs
    assert age.intervals == [{"closure": "closedClosed", "left": 0.0, "right": 120.0}]
    assert age.invalid_value_treatment == "returnInvalid"
    assert (work.data_type, work.op_type, work.values) == ("string", "categorical", ["private", "public", "self"])
    assert work.missing_values == ["NA"]
    assert work.invalid_value_treatment == "asMissing"
    assert hours.invalid_value_treatment == "asIs"
    assert schema.verification is not None and len(schema.verification.rows) == 3


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


@pytest.mark.parametrize(("name", "engine"), ENGINE_CASES)
def test_answers_match_the_model(name: str, engine: str, pmml_runtimes: dict[tuple[str, str], Runtime]) -> None:
    """Each engine's normalised answers against sklearn (or the hand-written model's own formula)."""
    runtime = pmml_runtimes[(name, engine)]
    records = models.sample_records(name)
    answers = runtime.predict(records)
    assert len(answers) == len(records)
    assert all("raw" in answer for answer in answers)
    if name in models.SKLEARN_PMML:
        _check_against_sklearn(name, records, answers)
    elif name in ("general_regression", "https_namespace"):
        for record, answer in zip(records, answers, strict=True):
            assert _close(answer["value"], glm_income(record["age"], record["work"], record["hours"]), 1e-9)
    elif name == "tree_without_output":
        for (_, label, probabilities), answer in zip(TREE_EXPECTED, answers, strict=True):
            assert answer["label"] == label
            assert answer["probabilities"].keys() == probabilities.keys()
            assert all(_close(answer["probabilities"][k], p, 1e-12) for k, p in probabilities.items())
    else:
        assert name == "anomaly_detection"
        c8 = 2 * (math.log(7) + 0.5772156649015329) - 2 * 7 / 8  # average path length of 8 samples
        paths = [(1.0 if r["x1"] > 3 else 3.0, 1.0 if r["x2"] < -2 else 3.0) for r in records]
        for path, answer in zip(paths, answers, strict=True):
            assert set(answer) == {"raw"}
            assert _close(answer["raw"]["anomalyScore"], 2 ** (-(sum(path) / 2) / c8), 1e-9)


def _check_against_sklearn(name: str, records: list[dict[str, Any]], answers: list[dict[str, Any]]) -> None:
    estimator = models.estimator(name)
    columns = models.REGRESSION_FEATURES if name in models.REGRESSORS else IRIS
    import pandas as pd

    X = pd.DataFrame(records)[columns]
    if name == "kmeans":
        distances = estimator.transform(X) ** 2  # sklearn2pmml declares squaredEuclidean
        for answer, cluster, row in zip(answers, estimator.predict(X), distances, strict=True):
            assert answer["cluster"] == int(cluster)
            assert np.allclose(answer["distances"], row, rtol=1e-9, atol=1e-9)
    elif name in models.REGRESSORS:
        for answer, value in zip(answers, estimator.predict(X), strict=True):
            assert _close(answer["value"], float(value))
    else:
        labels = [label.item() if hasattr(label, "item") else label for label in estimator.classes_]
        for answer, label, proba in zip(answers, estimator.predict(X), estimator.predict_proba(X), strict=True):
            assert answer["label"] == (label.item() if hasattr(label, "item") else label)
            assert type(answer["label"]) is type(labels[0])  # ints stay ints, strings stay strings
            assert list(answer["probabilities"]) == [str(c) for c in labels]
            assert np.allclose(list(answer["probabilities"].values()), proba, atol=1e-6)


def test_auto_falls_back_to_pypmml_when_jpmml_refuses(pmml_models: dict[str, Path], runtime_settings: Settings) -> None:
    with pytest.raises(InvalidModel, match=r"jpmml: .*AnomalyDetectionModel"):
        load_runtime(pmml_models["anomaly_detection"], runtime_settings, engine="jpmml")
    runtime = load_runtime(pmml_models["anomaly_detection"], runtime_settings)
    assert runtime.description.engine.implementation == "pypmml"


def test_settings_choose_the_engine(pmml_models: dict[str, Path], runtime_settings: Settings) -> None:
    settings = runtime_settings.model_copy(update={"pmml_engine": "pypmml"})
    assert load_runtime(pmml_models["random_forest"], settings).description.engine.implementation == "pypmml"
    forced = load_runtime(pmml_models["random_forest"], settings, engine="jpmml")
    assert forced.description.engine.implementation == "jpmml-evaluator"


def test_unknown_engine_is_a_field_error(pmml_models: dict[str, Path], runtime_settings: Settings) -> None:
    with pytest.raises(ValidationFailed) as caught:
        load_runtime(pmml_models["kmeans"], runtime_settings, engine="fastest")
    assert [e["field"] for e in caught.value.errors or []] == ["engine"]


def test_verification_records_that_no_engine_reproduces(tmp_path: Path, runtime_settings: Settings) -> None:
    path = models.make_pmml_general_regression_bad_verification(tmp_path)
    with pytest.raises(InvalidModel) as caught:
        load_runtime(path, runtime_settings)
    assert "jpmml:" in caught.value.detail and "pypmml:" in caught.value.detail
    assert "43" in caught.value.detail  # the expected value the model got wrong


@pytest.mark.parametrize(
    ("name", "declared", "accepted"),
    [
        ("anomaly_detection", "regression", True),  # functionName="regression"
        ("kmeans", "clustering", True),
        ("linear_regression", "classification", False),
        ("logistic_regression", "regression", False),
        ("kmeans", "dimensionality_reduction", False),  # PMML has no such functionName
        ("general_regression", "other", False),
    ],
)
def test_function_type_override(
    name: str, declared: Any, accepted: bool, pmml_models: dict[str, Path], runtime_settings: Settings
) -> None:
    if accepted:
        runtime = load_runtime(pmml_models[name], runtime_settings, function_type=declared)
        assert runtime.description.function_type == declared
        return
    with pytest.raises(ValidationFailed) as caught:
        load_runtime(pmml_models[name], runtime_settings, function_type=declared)
    errors = caught.value.errors or []
    assert [e["field"] for e in errors] == ["function_type"]
    assert errors[0]["received"] == declared


def test_anomaly_model_declared_regression_answers_a_value(
    pmml_models: dict[str, Path], runtime_settings: Settings
) -> None:
    runtime = load_runtime(pmml_models["anomaly_detection"], runtime_settings, function_type="regression")
    (answer,) = runtime.predict([{"x1": 5.0, "x2": -5.0}])
    assert answer["value"] == answer["raw"]["anomalyScore"] > 0.5


def test_engine_record_errors_name_the_record(pmml_runtimes: dict[tuple[str, str], Runtime]) -> None:
    runtime = pmml_runtimes[("logistic_regression", "jpmml")]
    records = models.sample_records("logistic_regression", 3)
    records[1] = {**records[1], "sepal_length": "not-a-number"}  # unvalidated on purpose
    with pytest.raises(ValidationFailed) as caught:
        runtime.predict(records)
    assert [e["field"] for e in caught.value.errors or []] == ["inputs[1]"]


@pytest.mark.parametrize("engine", ["jpmml", "pypmml"])
def test_one_engine_call_per_batch(engine: str, pmml_runtimes: dict[tuple[str, str], Runtime]) -> None:
    runtime: Any = pmml_runtimes[("random_forest", engine)]
    calls: list[int] = []
    original = runtime._engine.evaluate

    def counting(records: list[dict[str, Any]]) -> Any:
        calls.append(len(records))
        return original(records)

    runtime._engine.evaluate = counting
    try:
        assert len(runtime.predict(models.sample_records("random_forest", 50))) == 50
    finally:
        del runtime._engine.evaluate
    assert calls == [50]
    assert runtime.predict([]) == []


def test_missing_inputs_give_missing_answers(pmml_runtimes: dict[tuple[str, str], Runtime]) -> None:
    for engine in ("jpmml", "pypmml"):
        record = {**models.sample_records("logistic_regression", 1)[0], "petal_width": None}
        (answer,) = pmml_runtimes[("logistic_regression", engine)].predict([record])
        assert answer["label"] is None and answer["probabilities"] == {}


def test_unload(pmml_models: dict[str, Path], runtime_settings: Settings) -> None:
    runtime = load_runtime(pmml_models["kmeans"], runtime_settings)
    runtime.unload()
    with pytest.raises(ModelServeError, match="unloaded"):
        runtime.predict(models.sample_records("kmeans", 1))


# --- security ----------------------------------------------------------------------------------------------


@pytest.fixture
def engines_must_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an engine saw a file the security check must refuse")

    monkeypatch.setattr(engines, "ENGINES", {"jpmml": refuse, "pypmml": refuse})
    monkeypatch.setattr("inference.runtimes.pmml.ENGINES", {"jpmml": refuse, "pypmml": refuse})


@pytest.mark.usefixtures("engines_must_not_run")
@pytest.mark.parametrize("engine", [None, "jpmml", "pypmml"])
def test_xxe_is_refused_before_any_engine(
    engine: str | None, bad_files: dict[str, Path], runtime_settings: Settings
) -> None:
    with pytest.raises(InvalidModel, match="DOCTYPE not allowed") as caught:
        load_runtime(bad_files["pmml_xxe"], runtime_settings, engine=engine)
    assert models.XXE_SECRET not in str(caught.value.to_problem())
    with pytest.raises(InvalidModel, match="DOCTYPE not allowed"):
        detect_format(bad_files["pmml_xxe"])


@pytest.mark.usefixtures("engines_must_not_run")
def test_billion_laughs_is_refused_at_once(bad_files: dict[str, Path], runtime_settings: Settings) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidModel, match="DOCTYPE not allowed"):
        load_runtime(bad_files["pmml_billion_laughs"], runtime_settings)
    assert time.perf_counter() - started < 1.0


def test_jvm_runs_with_the_safe_xml_flags(pmml_runtimes: dict[tuple[str, str], Runtime]) -> None:
    assert java.jvm_started()
    assert java.system_property("javax.xml.accessExternalDTD") == ""
    assert java.system_property("javax.xml.accessExternalSchema") == ""


@pytest.mark.parametrize("engine_class", [JpmmlEngine, PypmmlEngine])
def test_second_wall_engines_never_resolve_external_entities(
    engine_class: type[JpmmlEngine] | type[PypmmlEngine], bad_files: dict[str, Path], pmml_models: dict[str, Path]
) -> None:
    """Bypass the DOCTYPE check: the engines themselves (JVM flags, jpmml's parser) still refuse the file."""
    schema = describe_pmml(parse_pmml(pmml_models["tree_without_output"].read_bytes()))
    with pytest.raises(EngineError) as caught:
        engine_class(bad_files["pmml_xxe"].read_bytes(), schema)
    assert models.XXE_SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("pmml_syntax_error", "Not well-formed XML"),
        ("xml_not_pmml", "expected <PMML>"),
    ],
)
def test_broken_pmml_is_refused(bad: str, message: str, bad_files: dict[str, Path], runtime_settings: Settings) -> None:
    with pytest.raises(InvalidModel, match=message):
        load_runtime(bad_files[bad], runtime_settings)


def test_malformed_declarations_are_refused(tmp_path: Path, runtime_settings: Settings) -> None:
    text = models.make_pmml_general_regression(tmp_path).read_text().replace('leftMargin="0"', 'leftMargin="zero"')
    path = tmp_path / "malformed.pmml"
    path.write_text(text)
    with pytest.raises(InvalidModel, match="Malformed PMML"):
        load_runtime(path, runtime_settings)


def test_jvm_is_not_started_at_import() -> None:
    code = (
        "import jpype, inference.runtimes, inference.runtimes.pmml, inference.runtimes.pmml_engines, inference.java\n"
        "assert not jpype.isJVMStarted()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parents[2])


def test_jvm_started_from_a_worker_thread_lets_the_process_exit(pmml_models: dict[str, Path]) -> None:
    """Servers load models in pool threads; a JVM started there must not block interpreter exit."""
    code = (
        "import sys, threading\n"
        "from pathlib import Path\n"
        "from inference.runtimes import load_runtime\n"
        "from shared.settings import Settings\n"
        "def load():\n"
        "    runtime = load_runtime(Path(sys.argv[1]), Settings(environment='test'))\n"
        "    runtime.predict([dict(sepal_length=5.1, sepal_width=3.5, petal_length=1.4, petal_width=0.2)])\n"
        "thread = threading.Thread(target=load)\n"
        "thread.start()\n"
        "thread.join()\n"
    )
    subprocess.run(
        # Generous: auto loads and cross-checks both engines, on a machine that may be busy (no timing asserted).
        [sys.executable, "-c", code, str(pmml_models["kmeans"])],
        check=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )


@pytest.mark.parametrize("name", ["random_forest", "logistic_regression", "kmeans", "linear_regression"])
def test_jpmml_single_record_answers_as_a_batch_does(name: str, pmml_runtimes: dict[tuple[str, str], Runtime]) -> None:
    """One record goes through jpmml's single-record `evaluate`: same answer as inside a batch, missing values too."""
    runtime: Any = pmml_runtimes[(name, "jpmml")]
    records = models.sample_records(name, 5)
    missing = {**records[0], next(iter(records[0])): None}
    batch = runtime.predict([*records, missing])
    calls: list[bool] = []
    original = runtime._engine._evaluate_one

    def counting(record: dict[str, Any]) -> Any:
        row = original(record)
        calls.append(row is not None)
        return row

    runtime._engine._evaluate_one = counting
    try:
        singles = [answer for record in [*records, missing] for answer in runtime.predict([record])]
    finally:
        del runtime._engine._evaluate_one
    assert calls == [True] * len(batch)  # every record answered by `evaluate`
    assert singles == batch
    assert [list(a["raw"]) for a in singles] == [list(a["raw"]) for a in batch]
