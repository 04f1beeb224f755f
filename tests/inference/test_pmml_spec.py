"""PMML answers are the specification's, whichever engine serves: each model class against its hand formula.

The fixtures (`tests.fixtures.pmml_spec`) are hand-written; every expected value below is computed from
their parameters, never from an engine. `auto` is what an upload uses: both engines are cross-checked and
the runtime is bound to the right one, as `description.engine.cross_check` reports.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.runtimes import Runtime, load_runtime
from inference.runtimes.examples import example_body
from inference.validation import validate_records
from shared.errors import InvalidModel, ModelServeError, ValidationFailed
from shared.settings import Settings
from tests.fixtures import pmml_spec as spec


@pytest.fixture(scope="module")
def spec_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pmml_spec")
    return {name: write(directory) for name, write in spec.SPEC_PMML.items()}


@pytest.fixture(scope="module")
def spec_runtimes(spec_models: dict[str, Path], runtime_settings: Settings) -> dict[tuple[str, str], Runtime]:
    """Runtimes by (fixture, engine), engine "auto" included; an engine that cannot load a model is absent."""
    loaded: dict[tuple[str, str], Runtime] = {}
    for name, path in spec_models.items():
        for engine in ("jpmml", "pypmml", "auto"):
            try:
                loaded[(name, engine)] = load_runtime(path, runtime_settings, engine=engine)
            except InvalidModel:
                assert (name, engine) == ("cox_verified", "pypmml")  # the one refusal the tests expect
    return loaded


def _predict(runtime: Runtime, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """As a request does: validated against the description, then predicted in one batch."""
    converted, _ = validate_records(runtime.description, records)
    return runtime.predict(converted)


def _close(a: float | None, b: float, tol: float = 1e-12) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=tol, abs_tol=tol)


ALL_ENGINES = ["jpmml", "pypmml", "auto"]

# --- 1. integer targets ------------------------------------------------------------------------------------

INTEGER_RECORDS = [(1.0, 2.0), (0.3, 0.0), (-1.0, 1.0), (4.0, -3.25), (-3.0, 0.5), (10.0, 7.0)]


@pytest.mark.parametrize("engine", ALL_ENGINES)
@pytest.mark.parametrize(
    ("name", "formula"), [("integer_regression", spec.count_regression), ("integer_network", spec.count_network)]
)
def test_integer_target_answers_the_rounded_value(
    name: str, formula: Any, engine: str, spec_runtimes: dict[tuple[str, str], Runtime]
) -> None:
    runtime = spec_runtimes[(name, engine)]
    answers = _predict(runtime, [{"x1": x1, "x2": x2} for x1, x2 in INTEGER_RECORDS])
    for (x1, x2), answer in zip(INTEGER_RECORDS, answers, strict=True):
        expected = math.floor(round(formula(x1, x2), 9) + 0.5)  # no castInteger declared: rounded
        assert answer["value"] == expected and type(answer["value"]) is int, (name, engine, x1, x2, answer)


def test_integer_target_is_described_as_integer(spec_runtimes: dict[tuple[str, str], Runtime]) -> None:
    description = spec_runtimes[("integer_regression", "auto")].description
    assert description.engine.implementation == "jpmml-evaluator"
    assert [(t.name, t.data_type) for t in description.targets] == [("count", "integer")]


# --- 2. association rules ----------------------------------------------------------------------------------

BASKETS: list[Any] = ["bread", ["bread"], ["bread", "butter"], ["milk"], ["jam", "milk"], ["eggs"]]


@pytest.mark.parametrize("engine", ["jpmml", "auto"])
def test_association_rules_answer_the_recommended_rule(
    engine: str, spec_runtimes: dict[tuple[str, str], Runtime]
) -> None:
    runtime = spec_runtimes[("association", engine)]
    assert runtime.description.function_type == "association_rules"
    answers = _predict(runtime, [{"item": basket} for basket in BASKETS])
    for basket, answer in zip(BASKETS, answers, strict=True):
        items = {basket} if isinstance(basket, str) else set(basket)
        best, new = spec.recommend(items), spec.recommend(items, exclusive=True)
        raw = answer["raw"]
        assert set(answer) == {"raw"}
        if best is None:
            assert raw["rule_id"] is None and raw["consequent"] is None and raw["confidence"] is None
        else:
            assert (raw["rule_id"], raw["consequent"], raw["confidence"]) == best, basket
        assert raw["new_item"] == (None if new is None else new[1]), basket


def test_association_example_body_is_answered(spec_runtimes: dict[tuple[str, str], Runtime]) -> None:
    runtime = spec_runtimes[("association", "auto")]
    (item,) = runtime.description.inputs
    assert item.multi_valued and item.values == list(spec.ITEMS.values())
    body = example_body(runtime.description)
    assert body == {"inputs": {"item": ["bread"]}}
    (answer,) = _predict(runtime, [body["inputs"]])
    assert answer["raw"]["rule_id"] == "r1"


def test_association_binds_to_the_engine_that_evaluates_it(spec_runtimes: dict[tuple[str, str], Runtime]) -> None:
    engine = spec_runtimes[("association", "auto")].description.engine
    assert engine.implementation == "jpmml-evaluator"
    report = engine.cross_check
    assert report is not None and report["agree"] is False
    assert report["errors"]["pypmml"] == report["records"] > 0
    assert report["errors"]["jpmml-evaluator"] == 0
    assert report["chosen"] == "jpmml-evaluator"
    assert all(str(d["pypmml"]).startswith("error:") for d in report["differences"])
    with pytest.raises(ModelServeError):  # forced onto pypmml, the model cannot be evaluated at all
        spec_runtimes[("association", "pypmml")].predict([{"item": ["bread"]}])


# --- 3. Cox regression -------------------------------------------------------------------------------------

COX_RECORDS = [
    (60.0, 1.0, 4.0),
    (40.0, 0.0, 0.5),
    (50.0, 0.0, 1.0),
    (35.0, 1.0, 2.999),
    (70.0, 0.0, 6.0),
    (45.0, 1.0, 9.5),
]


@pytest.mark.parametrize("engine", ["jpmml", "auto"])
def test_cox_regression_predicts_the_survival(engine: str, spec_runtimes: dict[tuple[str, str], Runtime]) -> None:
    runtime = spec_runtimes[("cox", engine)]
    records = [{"age": a, "treated": t, "time": time} for a, t, time in COX_RECORDS]
    for (age, treated, time), answer in zip(COX_RECORDS, _predict(runtime, records), strict=True):
        survival = spec.cox_survival(age, treated, time)
        assert _close(answer["value"], survival), (age, treated, time, answer)
        assert _close(answer["raw"]["predicted_survival"], survival)
        assert _close(answer["raw"]["cumHazard"], spec.cox_cumulative_hazard(age, treated, time))
    (late,) = _predict(runtime, [{"age": 50.0, "treated": 0.0, "time": spec.COX_MAX_TIME + 1}])
    assert late["value"] is None  # after the baseline table's maxTime: no prediction


def test_cox_regression_binds_to_the_engine_that_follows_the_spec(
    spec_runtimes: dict[tuple[str, str], Runtime],
) -> None:
    """pypmml takes the first baseline cell where the spec says the last one not after t: auto knows better."""
    engine = spec_runtimes[("cox", "auto")].description.engine
    assert engine.implementation == "jpmml-evaluator"
    report = engine.cross_check
    assert report is not None and report["agree"] is False and report["differences"]
    for difference in report["differences"]:
        inputs = difference["inputs"]
        expected = spec.cox_survival(inputs["age"], inputs["treated"], inputs["time"])
        assert _close(difference["jpmml-evaluator"]["value"], expected)
        assert not _close(difference["pypmml"]["value"], expected, 1e-9)


# --- 4. SVM with categorical predictors --------------------------------------------------------------------

SVM_RECORDS = [(1.0, "red"), (1.0, "blue"), (0.2, "green"), (2.0, "blue"), (0.0, "red"), (3.0, "green"), (0.6, "blue")]


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_svm_with_categorical_predictors_answers_the_binary_rule(
    engine: str, spec_runtimes: dict[tuple[str, str], Runtime]
) -> None:
    runtime = spec_runtimes[("svm_categorical", engine)]
    answers = _predict(runtime, [{"size": size, "colour": colour} for size, colour in SVM_RECORDS])
    labels = [spec.svm_class(size, colour) for size, colour in SVM_RECORDS]
    assert {"yes", "no"} <= set(labels)  # the records exercise both sides of the decision
    for (size, colour), label, answer in zip(SVM_RECORDS, labels, answers, strict=True):
        assert answer["label"] == label, (engine, size, colour, spec.svm_decision(size, colour))
        assert answer["probabilities"] == {"yes": float(label == "yes"), "no": float(label == "no")}


def test_svm_engines_agree_after_the_fix(spec_runtimes: dict[tuple[str, str], Runtime]) -> None:
    report = spec_runtimes[("svm_categorical", "auto")].description.engine.cross_check
    assert report is not None and report["agree"] is True and report["differences"] == []


# --- 5. clustering distances -------------------------------------------------------------------------------

POINTS = [(3.0, 1.0), (0.0, 4.0), (0.0, 0.0), (2.0, 2.5), (10.0, -3.0)]


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_clustering_answers_carry_the_distance_to_every_cluster(
    engine: str, spec_runtimes: dict[tuple[str, str], Runtime]
) -> None:
    runtime = spec_runtimes[("clusters_without_output", engine)]
    answers = _predict(runtime, [{"x": x, "y": y} for x, y in POINTS])
    for (x, y), answer in zip(POINTS, answers, strict=True):
        assert answer["cluster"] == int(spec.nearest_cluster(x, y))
        assert answer["distances"] == pytest.approx(spec.cluster_distances(x, y), abs=1e-12)
        assert not any(key.startswith("modelserve.") for key in answer["raw"])
    assert runtime.description.outputs == []  # the description is the uploaded file's


# --- 6. missing and invalid values -------------------------------------------------------------------------

A, B, C = spec.A_REPLACEMENT, spec.B_REPLACEMENT, spec.C_REPLACEMENT
TREATMENT_CASES: list[tuple[dict[str, Any], float | None]] = [
    ({"a": 1.0, "b": 0.5, "c": 10.0, "d": "hot"}, spec.treated(1.0, 0.5, 10.0, "hot")),
    ({"b": "NaN", "c": "NaN", "d": "hot"}, spec.treated(A, B, C, "hot")),  # absent and "NaN": missing
    ({"a": None, "b": 2.0, "c": 200.0, "d": "warm"}, spec.treated(A, B, 200.0, None)),  # asMissing / asIs
    ({"a": float("nan"), "b": "abc", "c": 50, "d": 3}, spec.treated(A, B, 50.0, None)),  # not even a number
    ({"a": "nan", "b": None, "c": None}, spec.treated(A, B, C, None)),
]


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_missing_and_invalid_values_follow_the_mining_fields(
    engine: str, spec_runtimes: dict[tuple[str, str], Runtime]
) -> None:
    runtime = spec_runtimes[("treatments", engine)]
    answers = _predict(runtime, [record for record, _ in TREATMENT_CASES])
    for (record, expected), answer in zip(TREATMENT_CASES, answers, strict=True):
        assert expected is not None and _close(answer["value"], expected), (engine, record, answer)


def test_treatments_are_described_and_returninvalid_still_refuses(
    spec_runtimes: dict[tuple[str, str], Runtime],
) -> None:
    description = spec_runtimes[("treatments", "auto")].description
    by_name = {s.name: s for s in description.inputs}
    assert {n: (s.required, s.invalid_value_treatment) for n, s in by_name.items()} == {
        "a": (False, "returnInvalid"),
        "b": (False, "asMissing"),
        "c": (False, "asIs"),
        "d": (False, "asMissing"),
    }
    with pytest.raises(ValidationFailed) as caught:  # c is asIs: a string is no number "as is"
        validate_records(description, [{"c": "abc"}])
    assert [e["field"] for e in caught.value.errors or []] == ["inputs[0].c"]


# --- 7. cross-check ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["integer_network", "clusters_without_output", "treatments", "svm_categorical"])
def test_cross_check_reports_agreement(name: str, spec_runtimes: dict[tuple[str, str], Runtime]) -> None:
    engine = spec_runtimes[(name, "auto")].description.engine
    assert engine.implementation == "jpmml-evaluator"
    assert engine.cross_check is not None
    assert engine.cross_check["agree"] is True
    assert engine.cross_check["records"] >= 20
    assert engine.cross_check["engines"] == ["jpmml-evaluator", "pypmml"]
    dumped = engine.model_dump(mode="json")
    assert dumped["cross_check"]["reason"] == "both engines agree: the faster serves"


def test_forced_engine_has_no_cross_check(spec_runtimes: dict[tuple[str, str], Runtime]) -> None:
    assert spec_runtimes[("svm_categorical", "pypmml")].description.engine.cross_check is None


# --- the way a user meets it: upload, describe, example, test over HTTP ------------------------------------


async def test_upload_describe_and_test_over_http(settings: Settings, spec_models: dict[str, Path]) -> None:
    from inference.app import create_app as create_inference
    from registry.app import create_app as create_registry
    from tests.conftest import LiveServer, asgi_client

    with LiveServer(create_registry(settings)) as server, httpx.Client(base_url=server.url, timeout=120) as registry:
        for name in ("association", "cox", "treatments"):
            path = spec_models[name]
            resp = registry.post("/api/v1/models", data={"name": name}, files={"file": (path.name, path.read_bytes())})
            assert resp.status_code == 201, resp.text
        described = {name: registry.get(f"/api/v1/models/{name}/versions/1").json() for name in ("association", "cox")}
        example = registry.get("/api/v1/models/association/versions/1/example").json()
        pool_settings = settings.model_copy(update={"registry_url": server.url})
        async with asgi_client(create_inference(pool_settings)) as pool:
            pool.timeout = httpx.Timeout(120)
            basket = await pool.post("/api/v1/models/association/versions/1/test", json=example)
            single = await pool.post("/api/v1/models/association/versions/1/test", json={"inputs": {"item": "milk"}})
            cox = await pool.post(
                "/api/v1/models/cox/versions/1/test", json={"inputs": {"age": 60, "treated": 1, "time": 4}}
            )
            treatments = await pool.post(
                "/api/v1/models/treatments/versions/1/test", json={"inputs": {"b": "NaN", "c": None, "d": "hot"}}
            )
    for engine in (described["association"]["engine"], described["cox"]["engine"]):
        assert engine["implementation"] == "jpmml-evaluator"
        assert engine["cross_check"]["agree"] is False and engine["cross_check"]["differences"]
    assert basket.status_code == 200, basket.text
    assert basket.json()["predictions"][0]["raw"]["consequent"] == ["butter"]
    assert single.status_code == 200, single.text
    assert single.json()["predictions"][0]["raw"]["rule_id"] == "r3"
    assert cox.status_code == 200, cox.text
    assert _close(cox.json()["predictions"][0]["value"], spec.cox_survival(60, 1, 4))
    assert treatments.status_code == 200, treatments.text
    assert _close(treatments.json()["predictions"][0]["value"], spec.treated(A, B, C, "hot"))


# --- 7b. verification records and coverage decide ----------------------------------------------------------


def test_verification_records_bind_to_the_engine_that_reproduces_them(
    spec_runtimes: dict[tuple[str, str], Runtime], spec_models: dict[str, Path], runtime_settings: Settings
) -> None:
    """The Cox records expect the survival: jpmml (corrected) reproduces them, pypmml does not."""
    runtime = spec_runtimes[("cox_verified", "auto")]
    engine = runtime.description.engine
    assert engine.implementation == "jpmml-evaluator"
    assert engine.cross_check is not None and engine.cross_check["verification_records"] == 3
    assert "pypmml" in engine.cross_check["refused"] and "survival expected" in engine.cross_check["refused"]["pypmml"]
    with pytest.raises(InvalidModel, match="verification record 0"):
        load_runtime(spec_models["cox_verified"], runtime_settings, engine="pypmml")
    for age, treated, time in spec.COX_VERIFIED_ROWS:
        (answer,) = runtime.predict([{"age": age, "treated": treated, "time": time}])
        assert _close(answer["value"], spec.cox_survival(age, treated, time))


def test_integer_verification_records_are_reproduced(spec_runtimes: dict[tuple[str, str], Runtime]) -> None:
    """Before: jpmml failed its own verification with a TypeCheckException; both engines now reproduce them."""
    engine = spec_runtimes[("integer_verified", "auto")].description.engine
    assert engine.implementation == "jpmml-evaluator"
    assert engine.cross_check is not None and engine.cross_check["verification_records"] == 3
    assert engine.cross_check["errors"] == {"jpmml-evaluator": 0, "pypmml": 0}


def test_an_engine_that_fails_the_generated_records_loses(spec_runtimes: dict[tuple[str, str], Runtime]) -> None:
    """jpmml-evaluator loads the weighted categorical predictor but refuses every record: pypmml serves."""
    runtime = spec_runtimes[("svm_weighted", "auto")]
    engine = runtime.description.engine
    assert engine.implementation == "pypmml"
    report = engine.cross_check
    assert report is not None and report["agree"] is False and report["chosen"] == "pypmml"
    assert report["errors"]["jpmml-evaluator"] == report["records"] and report["errors"]["pypmml"] == 0
    answers = _predict(runtime, [{"size": size, "colour": colour} for size, colour in SVM_RECORDS])
    labels = [spec.svm_weighted_class(size, colour) for size, colour in SVM_RECORDS]
    assert [a["label"] for a in answers] == labels


def test_cross_check_can_be_switched_off(spec_models: dict[str, Path], runtime_settings: Settings) -> None:
    """`pmml_cross_check_records=0`: the first engine that loads and verifies serves, as before the check."""
    settings = runtime_settings.model_copy(update={"pmml_cross_check_records": 0})
    engine = load_runtime(spec_models["svm_weighted"], settings).description.engine
    assert engine.implementation == "jpmml-evaluator" and engine.cross_check is None
    assert "cross_check" not in engine.model_dump()
