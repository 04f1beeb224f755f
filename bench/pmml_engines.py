"""Section `pmml`: the two PMML engines side by side, both through modelserve's runtime.

`load_runtime(path, settings, engine="jpmml")` (jpmml-evaluator over JPype) against `engine="pypmml"` (pypmml /
pmml4s, attached to the same in-process JVM), on a tree ensemble and a regression model: 1-record median latency
and 10,000-record throughput. Ratio = jpmml / pypmml. The target is the premise of `pmml_engine=auto`, which
tries jpmml-evaluator first because it is the faster engine: jpmml no slower than pypmml (latency ratio ≤ 1,
throughput ratio ≥ 1).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.common import (
    BATCH_ROWS,
    Budget,
    Case,
    ModelFiles,
    Row,
    SectionResult,
    Target,
    iris_rows,
    latencies,
    measure,
    throughputs,
)
from shared.settings import Settings

NO_SLOWER_LATENCY = Target("max", 1.0)
NO_SLOWER_THROUGHPUT = Target("min", 1.0)


def _measure_model(label: str, path: Path, features: list[str] | None, settings: Settings, budget: Budget) -> list[Row]:
    from inference.runtimes import load_runtime

    jpmml = load_runtime(path, settings, engine="jpmml")
    pypmml = load_runtime(path, settings, engine="pypmml")
    one, many = iris_rows(1, features), iris_rows(BATCH_ROWS, features)
    for runtime in (jpmml, pypmml):
        answer = runtime.predict(one)[0]
        if "label" not in answer and "value" not in answer:
            raise RuntimeError(f"{label}: unexpected answer {answer} for {one}")
    try:
        latency_samples = asyncio.run(
            measure(
                [Case("pypmml", lambda: pypmml.predict(one)), Case("jpmml", lambda: jpmml.predict(one))],
                rounds=budget.latency_rounds,
                calls=budget.latency_calls,
                budget=budget,
            )
        )
        batch_samples = asyncio.run(
            measure(
                [Case("pypmml", lambda: pypmml.predict(many)), Case("jpmml", lambda: jpmml.predict(many))],
                rounds=budget.batch_rounds,
                calls=1,
                budget=budget,
            )
        )
    finally:
        jpmml.unload()
        pypmml.unload()
    lat, thr = latencies(latency_samples), throughputs(batch_samples, len(many))
    return [
        Row(
            label,
            "runtime.predict, 1 record, p50",
            "µs",
            lat["jpmml"]["median_us"],
            "pypmml",
            lat["pypmml"]["median_us"],
            NO_SLOWER_LATENCY,
            {"jpmml": lat["jpmml"], "pypmml": lat["pypmml"]},
        ),
        Row(
            label,
            f"runtime.predict, {len(many):,} records",
            "rows/s",
            thr["jpmml"]["rows_per_s"],
            "pypmml",
            thr["pypmml"]["rows_per_s"],
            NO_SLOWER_THROUGHPUT,
            {"jpmml": thr["jpmml"], "pypmml": thr["pypmml"]},
        ),
    ]


def run(files: ModelFiles, budget: Budget, work_dir: Path) -> SectionResult:
    """Both engines on a tree ensemble (random forest) and a regression model (linear regression)."""
    from tests.fixtures import models

    settings = Settings(environment="test", data_dir=work_dir / "pmml-data", log_json=False)
    result = SectionResult(
        key="pmml",
        title="PMML engines: jpmml-evaluator vs pypmml, both through modelserve's runtime",
        value_header="jpmml-evaluator",
        baseline_header="pypmml",
    )
    result.rows += _measure_model(
        "PMML random forest (tree ensemble)", files.pmml("random_forest"), None, settings, budget
    )
    result.rows += _measure_model(
        "PMML linear regression", files.pmml("linear_regression"), list(models.REGRESSION_FEATURES), settings, budget
    )
    result.notes = [
        "Ratio = jpmml / pypmml. Target = the premise of `pmml_engine=auto` (jpmml-evaluator tried first as the "
        "faster engine): latency ratio ≤ 1, throughput ratio ≥ 1.",
        "Both engines run in the same in-process JVM (pypmml attached through its JPype gateway).",
    ]
    result.meta = {"batch_rows": BATCH_ROWS, "budget": budget.__dict__}
    return result
