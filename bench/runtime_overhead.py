"""Section `runtime`: what modelserve's runtime layer costs on top of the bare engine call.

For each model, in one process and interleaved round by round:

- `runtime.predict(records)` through `load_runtime(...)`, records as users send them (dicts);
- `Predictor.predict` (validation + session cache + micro-batcher, async), the in-process path of a replica;
- the bare engine call on inputs prepared beforehand: `InferenceSession.run` on a numpy array for ONNX, and for
  PMML the jpmml-evaluator Java entry points the engine wrapper calls (`PythonEvaluatorUtil.evaluateAll` on a
  pickled column payload, or `evaluate` on one pickled record), results unpickled into Python.

1 record: median latency over many calls. 10,000 records: rows/s at the median call.
Targets (runtime.predict rows): 1 record ≤ 2× the bare latency; 10,000 records ≥ 0.5× the bare throughput.
The Predictor rows are reported for information (`info`), with the same bare call beside them.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import (
    BATCH_ROWS,
    INFO,
    Budget,
    Case,
    ModelFiles,
    Row,
    SectionResult,
    Target,
    event_loop_name,
    iris_rows,
    latencies,
    measure,
    onnx_rows,
    run_async,
    throughputs,
)
from shared.settings import Settings

if TYPE_CHECKING:
    from inference.predictor import Predictor, VersionRef
    from inference.runtimes import Runtime

LATENCY_TARGET = Target("max", 2.0)
THROUGHPUT_TARGET = Target("min", 0.5)


@dataclass
class Bare:
    """The bare engine calls a model is compared with, inputs already in the engine's own form."""

    name: str
    one: dict[str, Callable[[], Any]]
    """1-record calls; when there are several, the fastest (lowest median) is the baseline."""
    many: Callable[[], Any]


@dataclass
class Subject:
    """A model under test: its file, the engine to force and its records as users send them."""

    label: str
    path: Path
    engine: str | None
    one: list[dict[str, Any]]
    many: list[dict[str, Any]]


def _settings(data_dir: Path) -> Settings:
    return Settings(environment="test", data_dir=data_dir, log_json=False)


def bare_onnx(path: Path, settings: Settings, one: list[dict[str, Any]], many: list[dict[str, Any]]) -> Bare:
    """`InferenceSession.run` on prebuilt float32 arrays, with the thread settings the runtime uses."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.onnx_intra_op_threads
    options.inter_op_num_threads = settings.onnx_inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x_one = np.asarray([record[name] for record in one], dtype=np.float32)
    x_many = np.asarray([record[name] for record in many], dtype=np.float32)
    return Bare(
        name="bare onnxruntime",
        one={"session.run": lambda: session.run(None, {name: x_one})},
        many=lambda: session.run(None, {name: x_many}),
    )


def bare_jpmml(path: Path, one: list[dict[str, Any]], many: list[dict[str, Any]]) -> Bare:
    """jpmml-evaluator's Java entry points on prebuilt pickles, in the process' JVM (started as modelserve does)."""
    from inference import java

    java.start_jvm()
    import jpype
    from jpmml_evaluator import make_evaluator

    evaluator = make_evaluator(path.read_bytes(), backend="jpype").javaEvaluator
    util = jpype.JClass("org.jpmml.evaluator.python.PythonEvaluatorUtil")
    columns = [str(f.getName()) for f in evaluator.getInputFields()]

    def column_payload(records: list[dict[str, Any]]) -> bytes:
        return pickle.dumps({"columns": columns, "data": [[r.get(c) for r in records] for c in columns]}, protocol=2)

    record_payload = pickle.dumps({c: one[0].get(c) for c in columns}, protocol=2)
    one_payload, many_payload = column_payload(one), column_payload(many)
    return Bare(
        name="bare jpmml-evaluator",
        one={
            "evaluate": lambda: pickle.loads(bytes(util.evaluate(evaluator, record_payload, None))),
            "evaluateAll": lambda: pickle.loads(bytes(util.evaluateAll(evaluator, one_payload, None, 1))),
        },
        many=lambda: pickle.loads(bytes(util.evaluateAll(evaluator, many_payload, None, 1))),
    )


def _predictor_for(path: Path, settings: Settings, runtime: Runtime, name: str) -> tuple[Predictor, VersionRef]:
    """A `Predictor` on a local artifact store holding `path`, and the `VersionRef` of that file."""
    from inference.predictor import Predictor, VersionRef
    from shared.artifacts import LocalArtifactStore

    store = LocalArtifactStore(settings.artifacts_dir)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    target = store.root / sha256[:2] / sha256
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    ref = VersionRef(model=name, version=1, sha256=sha256, description=runtime.description)
    return Predictor(settings, store), ref


async def _measure_subject(subject: Subject, bare: Bare, settings: Settings, budget: Budget) -> list[Row]:
    from inference.runtimes import load_runtime

    runtime = load_runtime(subject.path, settings, engine=subject.engine)
    predictor, ref = _predictor_for(subject.path, settings, runtime, subject.label.replace(" ", "_"))
    implementation = runtime.description.engine.implementation
    one, many = subject.one, subject.many
    answer = runtime.predict(one)
    if len(answer) != 1 or "label" not in answer[0] or len(runtime.predict(many)) != len(many):
        raise RuntimeError(f"{subject.label}: unexpected answer {answer} for {one}")
    try:
        latency_cases = [Case(f"bare:{n}", call) for n, call in bare.one.items()]
        latency_cases += [
            Case("runtime", lambda: runtime.predict(one)),
            Case("predictor", lambda: predictor.predict(ref, one), is_async=True),
        ]
        latency_samples = await measure(
            latency_cases, rounds=budget.latency_rounds, calls=budget.latency_calls, budget=budget
        )
        batch_cases = [
            Case("bare", bare.many),
            Case("runtime", lambda: runtime.predict(many)),
            Case("predictor", lambda: predictor.predict(ref, many), is_async=True),
        ]
        batch_samples = await measure(batch_cases, rounds=budget.batch_rounds, calls=1, budget=budget)
    finally:
        await predictor.close()
        runtime.unload()

    lat, thr = latencies(latency_samples), throughputs(batch_samples, len(many))
    bare_one = min((n for n in lat if n.startswith("bare:")), key=lambda n: lat[n]["median_us"])
    bare_calls = {n.removeprefix("bare:"): lat[n] for n in lat if n.startswith("bare:")}
    common = {"engine": implementation, "bare_call": bare_one.removeprefix("bare:"), "bare_calls": bare_calls}
    rows = [
        Row(
            subject.label,
            "runtime.predict, 1 record, p50",
            "µs",
            lat["runtime"]["median_us"],
            bare.name,
            lat[bare_one]["median_us"],
            LATENCY_TARGET,
            {**common, "modelserve": lat["runtime"], "baseline": lat[bare_one]},
        ),
        Row(
            subject.label,
            f"runtime.predict, {len(many):,} records",
            "rows/s",
            thr["runtime"]["rows_per_s"],
            bare.name,
            thr["bare"]["rows_per_s"],
            THROUGHPUT_TARGET,
            {**common, "modelserve": thr["runtime"], "baseline": thr["bare"]},
        ),
        Row(
            subject.label,
            "Predictor.predict with validation and batching, 1 record, p50",
            "µs",
            lat["predictor"]["median_us"],
            bare.name,
            lat[bare_one]["median_us"],
            INFO,
            {**common, "modelserve": lat["predictor"], "baseline": lat[bare_one]},
        ),
        Row(
            subject.label,
            f"Predictor.predict with validation and batching, {len(many):,} records",
            "rows/s",
            thr["predictor"]["rows_per_s"],
            bare.name,
            thr["bare"]["rows_per_s"],
            INFO,
            {**common, "modelserve": thr["predictor"], "baseline": thr["bare"]},
        ),
    ]
    return rows


def run(files: ModelFiles, budget: Budget, work_dir: Path) -> SectionResult:
    """Measure every model of the section; one table row per (path, workload)."""
    settings = _settings(work_dir / "runtime-data")
    result = SectionResult(
        key="runtime",
        title="Runtime overhead: modelserve runtime vs the bare engine call (same process, interleaved)",
    )
    onnx_one, onnx_many = onnx_rows(1), onnx_rows(BATCH_ROWS)
    pmml_one, pmml_many = iris_rows(1), iris_rows(BATCH_ROWS)
    subjects = [
        Subject("ONNX random forest", files.onnx("random_forest"), None, onnx_one, onnx_many),
        Subject("ONNX logistic regression", files.onnx("logistic_regression"), None, onnx_one, onnx_many),
        Subject("PMML random forest", files.pmml("random_forest"), "jpmml", pmml_one, pmml_many),
    ]
    for subject in subjects:
        if subject.path.suffix == ".onnx":
            bare = bare_onnx(subject.path, settings, subject.one, subject.many)
        else:
            bare = bare_jpmml(subject.path, subject.one, subject.many)
        result.rows += run_async(_measure_subject(subject, bare, settings, budget))
    result.notes = [
        "1 record: median (p50) latency of one call; 10,000 records: rows/s at the median call.",
        "Ratio = modelserve / baseline: a latency ratio above 1 is slower; a throughput ratio below 1 is slower.",
        "Bare calls get their input already in the engine's form (numpy array; pickled PMML columns): the ratio "
        "is what turning user records into engine input and engine output into answers costs.",
        "PMML 1-record baseline: the faster of jpmml-evaluator's `evaluate` and 1-row `evaluateAll` (see JSON).",
        "Predictor rows (info, no target: the targets are about the runtime layer) add input validation, the "
        "session cache and the micro-batcher (engine call in a worker thread), on the event loop uvicorn would "
        "pick: the in-process path of an inference replica, without HTTP.",
    ]
    result.meta = {
        "batch_rows": BATCH_ROWS,
        "budget": budget.__dict__,
        "event_loop": event_loop_name(),
        "onnx_threads": {"intra_op": settings.onnx_intra_op_threads, "inter_op": settings.onnx_inter_op_threads},
    }
    return result
