"""The normalised answer does not depend on who serves: jpmml vs pypmml, and PMML vs ONNX of one sklearn model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from inference.runtimes import Runtime, load_runtime
from inference.validation import validate_records
from shared.settings import Settings
from tests.fixtures import models

BOTH_ENGINES = sorted(set(models.SKLEARN_PMML) | set(models.HAND_WRITTEN_PMML) - models.JPMML_REFUSES)


def assert_same_answer(a: dict[str, Any], b: dict[str, Any], tol: float, where: str) -> None:
    """Normalised answers agree: same keys and labels, numbers within `tol` (absolute or relative)."""
    keys = set(a) - {"raw"}
    assert keys == set(b) - {"raw"}, where
    for key in keys:
        x, y = a[key], b[key]
        if key == "probabilities":
            assert list(x) == list(y), where
            assert all(math.isclose(x[k], y[k], abs_tol=tol) for k in x), f"{where}: {x} != {y}"
        elif isinstance(x, list):
            assert len(x) == len(y), where
            assert all(math.isclose(p, q, rel_tol=tol, abs_tol=tol) for p, q in zip(x, y, strict=True)), where
        elif isinstance(x, float):
            assert math.isclose(x, y, rel_tol=tol, abs_tol=tol), f"{where}: {key} {x} != {y}"
        else:
            assert x == y and type(x) is type(y), f"{where}: {key} {x!r} != {y!r}"


def test_every_pmml_fixture_is_compared(pmml_models: dict[str, Path]) -> None:
    assert set(BOTH_ENGINES) | models.JPMML_REFUSES == set(pmml_models)


@pytest.mark.parametrize("name", BOTH_ENGINES)
def test_both_pmml_engines_agree(name: str, pmml_runtimes: dict[tuple[str, str], Runtime]) -> None:
    jpmml, pypmml = pmml_runtimes[(name, "jpmml")], pmml_runtimes[(name, "pypmml")]
    assert jpmml.description.model_dump(exclude={"engine"}) == pypmml.description.model_dump(exclude={"engine"})
    records, _ = validate_records(jpmml.description, models.sample_records(name, 50))
    for i, (a, b) in enumerate(zip(jpmml.predict(records), pypmml.predict(records), strict=True)):
        assert_same_answer(a, b, 1e-6, f"{name} record {i}")


SAME_MODEL = ["logistic_regression", "decision_tree", "random_forest", "gradient_boosting", "linear_regression"]


@pytest.mark.parametrize("name", [*SAME_MODEL, "random_forest_regressor", "gradient_boosting_regressor"])
def test_pmml_and_onnx_of_one_sklearn_model_agree(
    name: str, pmml_models: dict[str, Path], onnx_models: dict[str, Path], runtime_settings: Settings
) -> None:
    """onnxruntime computes in float32, the PMML engines in float64: probabilities agree within 1e-4."""
    pmml = load_runtime(pmml_models[name], runtime_settings)
    onnx = load_runtime(onnx_models[name], runtime_settings)
    assert pmml.description.function_type == onnx.description.function_type
    assert pmml.description.class_labels == onnx.description.class_labels
    records = models.sample_records(name, 150)
    pmml_records, _ = validate_records(pmml.description, records)
    onnx_records, _ = validate_records(onnx.description, models.onnx_records(records, name))
    for i, (a, b) in enumerate(zip(pmml.predict(pmml_records), onnx.predict(onnx_records), strict=True)):
        assert_same_answer(a, b, 1e-4, f"{name} record {i}")


def test_kmeans_clusters_agree_across_formats(
    pmml_models: dict[str, Path], onnx_models: dict[str, Path], runtime_settings: Settings
) -> None:
    """Same clusters; PMML's distances are squared Euclidean (declared), ONNX's plain Euclidean."""
    records = models.sample_records("kmeans", 150)
    pmml = load_runtime(pmml_models["kmeans"], runtime_settings).predict(records)
    onnx = load_runtime(onnx_models["kmeans"], runtime_settings).predict(models.onnx_records(records, "kmeans"))
    for a, b in zip(pmml, onnx, strict=True):
        assert a["cluster"] == b["cluster"]
        pairs = zip(a["distances"], b["distances"], strict=True)
        assert all(math.isclose(p, q * q, rel_tol=1e-4, abs_tol=1e-4) for p, q in pairs)
