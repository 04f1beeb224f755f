"""ONNX runtime: description from the graph, one session.run per batch, normalised answers, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper

from inference.runtimes import Runtime, detect_format, load_runtime
from inference.runtimes import onnx as onnx_runtime
from inference.runtimes.onnx_schema import refuse_external_data
from shared.errors import InvalidModel, ModelServeError, ValidationFailed
from shared.settings import Settings
from tests.fixtures import models

# name -> (algorithm, function type, input width, class labels)
EXPECTED: dict[str, tuple[str, str, int, list[Any] | None]] = {
    "logistic_regression": ("LinearClassifier", "classification", 4, [0, 1, 2]),
    "logistic_regression_tensor": ("LinearClassifier", "classification", 4, [0, 1, 2]),
    "decision_tree": ("TreeEnsembleClassifier", "classification", 4, models.SPECIES),
    "random_forest": ("TreeEnsembleClassifier", "classification", 4, [0, 1, 2]),
    "gradient_boosting": ("TreeEnsembleClassifier", "classification", 4, [0, 1, 2]),
    "random_forest_regressor": ("TreeEnsembleRegressor", "regression", 3, None),
    "gradient_boosting_regressor": ("TreeEnsembleRegressor", "regression", 3, None),
    "linear_regression": ("LinearRegressor", "regression", 3, None),
    "kmeans": ("KMeans", "clustering", 4, None),
    "pca": ("PCA", "dimensionality_reduction", 4, None),
    "neural_network": ("NeuralNetwork", "other", 4, None),
}


def test_every_fixture_has_expectations(onnx_models: dict[str, Path]) -> None:
    assert set(onnx_models) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_describe(name: str, onnx_models: dict[str, Path], runtime_settings: Settings) -> None:
    assert detect_format(onnx_models[name]) == "onnx"
    runtime = load_runtime(onnx_models[name], runtime_settings)
    algorithm, function_type, width, labels = EXPECTED[name]
    description = runtime.description
    assert isinstance(runtime, Runtime)
    assert description.format == "onnx"
    assert description.engine.model_dump() == {
        "name": "onnx",
        "version": ort.__version__,
        "implementation": "onnxruntime",
    }
    assert (description.algorithm, description.function_type, description.class_labels) == (
        algorithm,
        function_type,
        labels,
    )
    (field,) = description.inputs
    expected_name = "x" if name == "neural_network" else "X"
    assert (field.name, field.data_type, field.shape[1:] if field.shape else None) == (expected_name, "float", [width])
    assert description.outputs and all(not o.required for o in description.outputs)


def test_zipmap_output_type_is_described(onnx_models: dict[str, Path], runtime_settings: Settings) -> None:
    outputs = load_runtime(onnx_models["logistic_regression"], runtime_settings).description.outputs
    assert [(o.name, o.data_type) for o in outputs] == [
        ("output_label", "int64"),
        ("output_probability", "seq(map(int64,float))"),
    ]


def _plain(value: Any) -> None:
    """Fails on anything JSON would not carry as is (numpy scalars, arrays, bytes)."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str)
            _plain(item)
    elif isinstance(value, list):
        for item in value:
            _plain(item)
    else:
        assert value is None or type(value) in (bool, int, float, str), type(value)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_answers_match_sklearn(name: str, onnx_models: dict[str, Path], runtime_settings: Settings) -> None:
    runtime = load_runtime(onnx_models[name], runtime_settings)
    records = models.sample_records(name)
    answers = runtime.predict(models.onnx_records(records, name))
    assert len(answers) == len(records)
    _plain(answers)
    json.dumps(answers, allow_nan=False)
    X = np.array([next(iter(r.values())) for r in models.onnx_records(records, name)], dtype=np.float32)
    if name == "neural_network":
        w1, b1, w2, b2 = models.NN_WEIGHTS
        expected = np.maximum(X @ w1 + b1, 0) @ w2 + b2
        for answer, row in zip(answers, expected, strict=True):
            assert set(answer) == {"raw"}
            assert np.allclose(answer["raw"]["y"], row, atol=1e-5)
        return
    if name == "pca":
        for answer, row in zip(answers, models.fitted_pca().transform(X), strict=True):
            assert np.allclose(answer["components"], row, atol=1e-4)
        return
    estimator = models.estimator(name.removesuffix("_tensor"))
    columns = models.REGRESSION_FEATURES if name in models.REGRESSORS else models.FEATURES
    X = pd.DataFrame(records)[columns]  # what the estimator was fitted on
    if name == "kmeans":
        for answer, cluster, row in zip(answers, estimator.predict(X), estimator.transform(X), strict=True):
            assert answer["cluster"] == int(cluster)
            assert np.allclose(answer["distances"], row, atol=1e-4)
    elif name in models.REGRESSORS:
        for answer, value in zip(answers, estimator.predict(X), strict=True):
            assert answer["value"] == pytest.approx(float(value), rel=1e-4)
    else:
        classes = [c.item() if hasattr(c, "item") else c for c in estimator.classes_]
        for answer, label, proba in zip(answers, estimator.predict(X), estimator.predict_proba(X), strict=True):
            assert answer["label"] == (label.item() if hasattr(label, "item") else label)
            assert list(answer["probabilities"]) == [str(c) for c in classes]
            assert np.allclose(list(answer["probabilities"].values()), proba, atol=1e-5)


def test_zipmap_and_tensor_probabilities_normalise_alike(
    onnx_models: dict[str, Path], runtime_settings: Settings
) -> None:
    records = models.onnx_records(models.sample_records("logistic_regression"), "logistic_regression")
    zipmap = load_runtime(onnx_models["logistic_regression"], runtime_settings).predict(records)
    tensor = load_runtime(onnx_models["logistic_regression_tensor"], runtime_settings).predict(records)
    for a, b in zip(zipmap, tensor, strict=True):
        assert a["label"] == b["label"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-7)
    assert isinstance(tensor[0]["raw"]["probabilities"], list)


def test_one_session_run_per_batch(onnx_models: dict[str, Path], runtime_settings: Settings) -> None:
    runtime: Any = load_runtime(onnx_models["random_forest"], runtime_settings)
    calls: list[dict[str, tuple[int, ...]]] = []
    session = runtime._session

    class Counting:
        def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
            calls.append({k: v.shape for k, v in feeds.items()})
            return session.run(names, feeds)

    runtime._session = Counting()
    records = models.onnx_records(models.sample_records("random_forest", 50), "random_forest")
    assert len(runtime.predict(records)) == 50
    assert calls == [{"X": (50, 4)}]
    assert runtime.predict([]) == []


@pytest.mark.parametrize(
    ("name", "declared", "accepted"),
    [
        ("neural_network", "dimensionality_reduction", True),  # a float [N, 2] output
        ("neural_network", "classification", False),  # no label output
        ("neural_network", "regression", False),  # two values per row
        ("random_forest", "other", True),
        ("random_forest", "regression", False),
        ("linear_regression", "classification", False),
        ("kmeans", "classification", True),  # label + scores: the uploader's word is taken
        ("pca", "regression", False),
    ],
)
def test_function_type_override(
    name: str, declared: Any, accepted: bool, onnx_models: dict[str, Path], runtime_settings: Settings
) -> None:
    if not accepted:
        with pytest.raises(ValidationFailed) as caught:
            load_runtime(onnx_models[name], runtime_settings, function_type=declared)
        assert [e["field"] for e in caught.value.errors or []] == ["function_type"]
        return
    runtime = load_runtime(onnx_models[name], runtime_settings, function_type=declared)
    assert runtime.description.function_type == declared
    (answer,) = runtime.predict(models.onnx_records(models.sample_records(name, 1), name))
    if declared == "dimensionality_reduction":
        assert np.allclose(answer["components"], answer["raw"]["y"])
    elif declared == "other":
        assert set(answer) == {"raw"}


def test_engine_applies_to_pmml_only(onnx_models: dict[str, Path], runtime_settings: Settings) -> None:
    with pytest.raises(ValidationFailed) as caught:
        load_runtime(onnx_models["kmeans"], runtime_settings, engine="jpmml")
    assert [e["field"] for e in caught.value.errors or []] == ["engine"]


def _tiny_model(path: Path, shape: list[Any]) -> Path:
    """y = 2·x for a float input of `shape`."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def test_scalar_records_for_an_n_by_1_input(tmp_path: Path, runtime_settings: Settings) -> None:
    runtime = load_runtime(_tiny_model(tmp_path / "n1.onnx", ["N", 1]), runtime_settings)
    assert runtime.description.inputs[0].shape == ["N", 1]
    answers = runtime.predict([{"x": 1.5}, {"x": [2.0]}])
    assert [a["raw"]["y"] for a in answers] == [[3.0], [4.0]]


def test_batch_size_one_graph_takes_whole_tensors_record_by_record(tmp_path: Path, runtime_settings: Settings) -> None:
    # A fixed leading dimension of 1 is no batch axis: each record is the [1, 3] tensor, answered as [1, 3].
    runtime = load_runtime(_tiny_model(tmp_path / "b1.onnx", [1, 3]), runtime_settings)
    assert runtime.description.batched is False
    answers = runtime.predict([{"x": [[1.0, 2.0, 3.0]]}, {"x": [[0.5, 0.0, -1.0]]}])
    assert [a["raw"]["y"] for a in answers] == [[[2.0, 4.0, 6.0]], [[1.0, 0.0, -2.0]]]


def test_wrong_shape_reaching_the_runtime_is_a_validation_error(
    onnx_models: dict[str, Path], runtime_settings: Settings
) -> None:
    runtime = load_runtime(onnx_models["kmeans"], runtime_settings)
    with pytest.raises(ValidationFailed):
        runtime.predict([{"X": [1.0, 2.0, 3.0, 4.0]}, {"X": [1.0, 2.0]}])


def test_session_settings(runtime_settings: Settings) -> None:
    settings = runtime_settings.model_copy(
        update={
            "onnx_intra_op_threads": 3,
            "onnx_inter_op_threads": 2,
            "onnx_graph_optimization": "basic",
            "onnx_providers": ["NoSuchExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider"],
        }
    )
    options = onnx_runtime.session_options(settings)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 2)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    chosen = onnx_runtime.providers(settings)
    expected = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        expected.insert(0, "CUDAExecutionProvider")
    assert chosen == expected


def test_external_data_is_refused_before_any_session(
    bad_files: dict[str, Path], runtime_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_session(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a session was created for a model with external data")

    monkeypatch.setattr(onnx_runtime.ort, "InferenceSession", no_session)
    with pytest.raises(InvalidModel, match=r"External-data tensors are not allowed.*: W$"):
        load_runtime(bad_files["onnx_external_data"], runtime_settings)


def test_external_data_inside_a_subgraph_is_found(bad_files: dict[str, Path]) -> None:
    inner = onnx.load_model_from_string(bad_files["onnx_external_data"].read_bytes())
    weight = inner.graph.initializer[0]
    branch = helper.make_graph(
        [helper.make_node("Identity", ["W"], ["out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
        initializer=[weight],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph(
        [node],
        "outer",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    with pytest.raises(InvalidModel, match="External-data"):
        refuse_external_data(helper.make_model(graph))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("empty", "Empty file"),
        ("text", "Unrecognised model format"),
        ("truncated_onnx", "truncated or corrupt"),
    ],
)
def test_unloadable_files(bad: str, message: str, bad_files: dict[str, Path], runtime_settings: Settings) -> None:
    with pytest.raises(InvalidModel, match=message):
        detect_format(bad_files[bad])
    with pytest.raises(InvalidModel, match=message):
        load_runtime(bad_files[bad], runtime_settings)


def test_unload(onnx_models: dict[str, Path], runtime_settings: Settings) -> None:
    runtime = load_runtime(onnx_models["pca"], runtime_settings)
    runtime.unload()
    with pytest.raises(ModelServeError, match="unloaded"):
        runtime.predict([{"X": [1.0, 2.0, 3.0, 4.0]}])


@pytest.mark.parametrize(
    ("attribute", "labels"),
    [
        ("classlabels_int64s", [10, 9, -1, 3]),
        ("classlabels_strings", ["é", "z", "a", "Z"]),
    ],
)
@pytest.mark.parametrize("count", [1, 3, 300])
def test_zipmap_rebuilt_from_its_tensor_as_onnxruntime_gives_it(
    attribute: str, labels: list[Any], count: int, tmp_path: Path, runtime_settings: Settings
) -> None:
    """The ZipMap output is built from its input tensor: same dicts, same key order as onnxruntime's ZipMap."""
    key_type = TensorProto.INT64 if attribute == "classlabels_int64s" else TensorProto.STRING
    zipmap_labels: dict[str, Any] = {attribute: labels}
    zipped = helper.make_sequence_type_proto(
        helper.make_map_type_proto(key_type, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    )
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "one"], ["scores"]),
            helper.make_node("ArgMax", ["x"], ["label"], axis=1, keepdims=0),
            helper.make_node("ZipMap", ["scores"], ["probabilities"], domain="ai.onnx.ml", **zipmap_labels),
        ],
        "zipmap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, len(labels)])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_value_info("probabilities", zipped),
        ],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)], ir_version=8
    )
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(model.SerializeToString())
    runtime: Any = load_runtime(path, runtime_settings)
    assert runtime._zipmap_sources  # the tensor path is the one under test
    X = np.random.default_rng(count).random((count, len(labels)), dtype=np.float32)
    (_, expected) = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"]).run(None, {"x": X})
    answers = runtime.predict([{"x": row} for row in X.tolist()])
    for answer, zipped_row in zip(answers, expected, strict=True):
        wanted = {str(k): v for k, v in zipped_row.items()}
        assert list(answer["raw"]["probabilities"].items()) == list(wanted.items())
        assert answer["probabilities"] == wanted
    json.dumps(answers, allow_nan=False)


@pytest.mark.parametrize("name", ["random_forest", "logistic_regression", "logistic_regression_tensor",
                                  "gradient_boosting"])  # fmt: skip
def test_compiled_classifier_answers_equal_the_general_path(
    name: str, onnx_models: dict[str, Path], runtime_settings: Settings
) -> None:
    runtime: Any = load_runtime(onnx_models[name], runtime_settings)
    assert runtime._answers.classify_plan is not None, "the compiled path is the one under test"
    records = [{"X": row} for row in np.random.default_rng(3).uniform(0.1, 7.9, (300, 4)).tolist()]
    compiled = runtime.predict(records)
    runtime._answers.classify_plan = None
    general = runtime.predict(records)
    assert compiled == general
    assert [list(a) for a in compiled[:1]] == [list(a) for a in general[:1]]  # same key order
    assert [list(a["raw"]) for a in compiled[:1]] == [list(a["raw"]) for a in general[:1]]


@pytest.mark.parametrize("name", ["random_forest", "logistic_regression"])
def test_session_runs_without_the_zipmap_node(
    name: str, onnx_models: dict[str, Path], runtime_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime runs every node whatever is fetched: the served graph drops the ZipMap its answers replace,
    and the original graph is built only when a tensor is not the expected [N, C] floats."""
    runtime: Any = load_runtime(onnx_models[name], runtime_settings)
    served = {o.name for o in runtime._session.get_outputs()}
    original = ort.InferenceSession(onnx_models[name].read_bytes(), providers=["CPUExecutionProvider"])
    zipmap_outputs = set(runtime._zipmap_sources)
    assert zipmap_outputs and not served & zipmap_outputs
    assert {source.tensor for source in runtime._zipmap_sources.values()} <= served
    assert runtime._full_session is None

    records = models.onnx_records(models.sample_records(name, 20), name)
    X = np.asarray([r["X"] for r in records], dtype=np.float32)
    label_name = next(o.name for o in original.get_outputs() if o.name not in zipmap_outputs)
    labels, maps = original.run([label_name, *zipmap_outputs], {"X": X})
    answers = runtime.predict(records)
    assert [a["label"] for a in answers] == labels.tolist()
    assert [a["probabilities"] for a in answers] == [{str(k): v for k, v in m.items()} for m in maps]

    # The rare fallback: onnxruntime's own ZipMap, from the original graph built on first need.
    monkeypatch.setattr(onnx_runtime, "zipmap_column", lambda *args: None)
    runtime._answers.classify_plan = None
    fallback = runtime.predict(records)
    assert runtime._full_session is not None
    assert [a["label"] for a in fallback] == labels.tolist()
    assert [a["probabilities"] for a in fallback] == [a["probabilities"] for a in answers]
    runtime.unload()
    assert runtime._full_session is None


def test_a_graph_the_pruning_does_not_suit_is_served_whole(
    onnx_models: dict[str, Path], runtime_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = models.onnx_records(models.sample_records("random_forest", 10), "random_forest")
    expected = load_runtime(onnx_models["random_forest"], runtime_settings).predict(records)
    monkeypatch.setattr(onnx_runtime, "without_zipmaps", lambda *args: b"not a graph")
    runtime: Any = load_runtime(onnx_models["random_forest"], runtime_settings)
    assert runtime._zipmap_sources == {}
    answers = runtime.predict(records)
    assert [a["label"] for a in answers] == [a["label"] for a in expected]
    assert [a["probabilities"] for a in answers] == [a["probabilities"] for a in expected]
