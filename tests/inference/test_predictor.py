"""Predictor.predict_many: the replica's path for the gateway's coalesced requests, one answer or error each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference.predictor import Prediction, Predictor, VersionRef
from inference.runtimes import load_runtime
from shared.artifacts import LocalArtifactStore
from shared.errors import BadRequest, ValidationFailed
from shared.settings import Settings


@pytest.fixture
async def predictor_and_ref(onnx_models: dict[str, Path], tmp_path: Path) -> tuple[Predictor, VersionRef]:
    settings = Settings(environment="test", data_dir=tmp_path, log_json=False)
    store = LocalArtifactStore(settings.artifacts_dir)
    writer = store.writer(10**9)
    writer.write(onnx_models["random_forest"].read_bytes())
    staged = writer.finish()
    store.commit(staged)
    description = load_runtime(onnx_models["random_forest"], settings).description
    return Predictor(settings, store), VersionRef("iris", 1, staged.sha256, description)


async def test_each_caller_gets_its_own_answers_or_error(predictor_and_ref: tuple[Predictor, VersionRef]) -> None:
    predictor, ref = predictor_and_ref
    setosa, virginica = [5.1, 3.5, 1.4, 0.2], [7.7, 3.0, 6.1, 2.3]
    unparsed = BadRequest("not a body")
    try:
        results = await predictor.predict_many(
            ref,
            [
                [{"X": setosa}],
                [{"X": "not numbers"}],
                unparsed,
                [{"X": virginica}, {"X": setosa, "extra": 1}],
            ],
        )
        alone = [await predictor.predict(ref, [{"X": v}]) for v in (setosa, virginica)]
    finally:
        await predictor.close()

    first, bad, passed_through, last = results
    assert isinstance(first, Prediction) and isinstance(last, Prediction)
    assert first.predictions == alone[0].predictions
    assert last.predictions == alone[1].predictions + alone[0].predictions
    assert last.warnings and "extra" in last.warnings[0]
    assert isinstance(bad, ValidationFailed) and bad.errors[0]["field"].startswith("inputs[0].X")
    assert passed_through is unparsed
    assert set(first.timing) == {"validate_ms", "load_ms", "predict_ms", "total_ms"}


async def test_nothing_valid_skips_the_engine(predictor_and_ref: tuple[Predictor, VersionRef]) -> None:
    predictor, ref = predictor_and_ref
    try:
        results = await predictor.predict_many(ref, [[{"nope": 1}]])
    finally:
        await predictor.close()
    assert isinstance(results[0], ValidationFailed)
    assert predictor._batchers == {}


@pytest.mark.parametrize(("fixture", "batched"), [("random_forest", True), ("concat", False)])
async def test_only_graphs_with_a_batch_axis_share_engine_calls(
    fixture: str, batched: bool, onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    from tests.fixtures import models

    path = onnx_models[fixture] if fixture in onnx_models else models.make_onnx_concat(tmp_path)
    settings = Settings(environment="test", data_dir=tmp_path / "data", log_json=False, max_batch_delay_ms=50.0)
    store = LocalArtifactStore(settings.artifacts_dir)
    writer = store.writer(10**9)
    writer.write(path.read_bytes())
    staged = writer.finish()
    store.commit(staged)
    description = load_runtime(path, settings).description
    assert description.batched is batched
    predictor = Predictor(settings, store)
    ref = VersionRef(fixture, 1, staged.sha256, description)
    record = {"X": [5.1, 3.5, 1.4, 0.2]} if batched else {"A": [[1.0, 2.0, 3.0]], "B": [[4.0, 5.0, 6.0]]}
    try:
        runtime = await predictor.runtime(ref)
        calls: list[int] = []
        predict = runtime.predict

        def counting(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
            calls.append(len(records))
            return predict(records)

        runtime.predict = counting  # type: ignore[method-assign]
        results = await predictor.predict_many(ref, [[record], [record], [record]])
    finally:
        await predictor.close()
    assert all(isinstance(r, Prediction) and len(r.predictions) == 1 for r in results)
    assert calls == ([3] if batched else [1, 1, 1])


async def test_a_version_stored_without_its_batch_flag_is_validated_as_the_graph_declares(tmp_path: Path) -> None:
    from tests.fixtures import models

    path = models.make_onnx_concat(tmp_path)
    settings = Settings(environment="test", data_dir=tmp_path / "data", log_json=False)
    store = LocalArtifactStore(settings.artifacts_dir)
    writer = store.writer(10**9)
    writer.write(path.read_bytes())
    staged = writer.finish()
    store.commit(staged)
    stale = load_runtime(path, settings).description.model_copy(update={"batched": True})  # an older registry row
    predictor = Predictor(settings, store)
    try:
        result = await predictor.predict(
            VersionRef("concat", 1, staged.sha256, stale), [{"A": [[1.0, 2.0, 3.0]], "B": []}]
        )
    finally:
        await predictor.close()
    assert result.predictions == [{"raw": {"C": [[1.0, 2.0, 3.0]]}}]
