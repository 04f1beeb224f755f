"""What every benchmark section shares: timing, targets, result rows, tables, JSON files and model files."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

from rich import box
from rich.table import Table
from rich.text import Text

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
BATCH_ROWS = 10_000
"""Records in the throughput workloads."""

T = TypeVar("T")
Status = Literal["PASS", "MISS", "info"]


# --- targets and result rows ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What the ratio modelserve/baseline must reach: at most (`max`) or at least (`min`) `limit`.

    `info` sets no target: the row is reported, never judged.
    """

    kind: Literal["max", "min", "info"]
    limit: float | None = None

    def check(self, ratio: float | None) -> Status:
        """PASS or MISS for a ratio (`info` when there is no target; MISS when nothing was measured)."""
        if self.kind == "info" or self.limit is None:
            return "info"
        if ratio is None:
            return "MISS"
        return "PASS" if (ratio <= self.limit if self.kind == "max" else ratio >= self.limit) else "MISS"

    def __str__(self) -> str:
        if self.kind == "info" or self.limit is None:
            return "—"
        return f"{'≤' if self.kind == 'max' else '≥'} {self.limit:.2f}×"


INFO = Target("info")


@dataclass
class Row:
    """One figure of a section beside its baseline."""

    subject: str
    """The model or scenario, e.g. `ONNX random forest`."""
    what: str
    """The path measured and its workload, e.g. `runtime.predict, 1 record`."""
    unit: str
    """`µs`, `ms`, `rows/s` or `req/s`."""
    value: float | None
    baseline_name: str
    baseline: float | None
    target: Target
    details: dict[str, Any] = field(default_factory=dict)
    """Everything else worth keeping in the JSON (percentiles, sample counts, which call was the baseline)."""

    @property
    def ratio(self) -> float | None:
        """modelserve / baseline (in the row's unit: above 1 means slower for a latency, faster for a rate)."""
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def status(self) -> Status:
        return self.target.check(self.ratio)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = str(self.target)
        data["ratio"] = self.ratio
        data["status"] = self.status
        return data


@dataclass
class SectionResult:
    """A section's rows, with notes printed under its table and metadata kept in its JSON file."""

    key: str
    title: str
    value_header: str = "modelserve"
    baseline_header: str = "baseline"
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# --- timing ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How much to measure: interleaved rounds, calls per round, warm-up bounds per case, load-run lengths."""

    latency_rounds: int
    latency_calls: int
    batch_rounds: int
    warmup_min_s: float
    warmup_max_s: float
    load_duration_s: float
    load_warmup_s: float


FULL = Budget(
    latency_rounds=10,
    latency_calls=300,
    batch_rounds=7,
    warmup_min_s=0.5,
    warmup_max_s=6.0,
    load_duration_s=5.0,
    load_warmup_s=1.0,
)
QUICK = Budget(
    latency_rounds=3,
    latency_calls=100,
    batch_rounds=2,
    warmup_min_s=0.1,
    warmup_max_s=0.4,
    load_duration_s=2.0,
    load_warmup_s=0.5,
)


@dataclass(frozen=True)
class Case:
    """One thing to time: a no-argument call, awaited when `is_async`."""

    name: str
    call: Callable[[], Any]
    is_async: bool = False


@dataclass
class Samples:
    """Per-call durations (seconds) of each case, and how long each case was warmed up."""

    durations: dict[str, list[float]]
    warmup_s: dict[str, float]


async def _invoke(case: Case) -> None:
    if case.is_async:
        await case.call()
    else:
        case.call()


_WARMUP_WINDOW_S = 0.25
_WARMUP_WINDOW_CALLS = 3
_STILL_IMPROVING = 0.95
"""A warm-up window whose median is below this fraction of the previous one's means the case is still warming."""


async def warm_up(case: Case, *, min_s: float, max_s: float) -> float:
    """Call `case` until its speed stops improving (JIT compilation, caches), between `min_s` and `max_s`.

    The JVM engines need seconds of calls before their hot paths are compiled (a jpmml-evaluator single-record
    call goes from ~250 µs to ~50 µs over ~3 s here); onnxruntime is steady at once. Windows of at least
    0.25 s and 3 calls are compared: warm once two windows in a row are not 5% faster than the one before.
    Returns the seconds spent.
    """
    perf = time.perf_counter
    started = perf()
    previous: float | None = None
    steady = 0
    while True:
        window_start = perf()
        durations: list[float] = []
        while len(durations) < _WARMUP_WINDOW_CALLS or perf() - window_start < _WARMUP_WINDOW_S:
            call_start = perf()
            await _invoke(case)
            durations.append(perf() - call_start)
        median = statistics.median(durations)
        steady = steady + 1 if previous is not None and median >= previous * _STILL_IMPROVING else 0
        previous = median if previous is None else min(previous, median)
        elapsed = perf() - started
        if elapsed >= max_s or (elapsed >= min_s and steady >= 2):
            return elapsed


async def measure(cases: Sequence[Case], *, rounds: int, calls: int, budget: Budget) -> Samples:
    """Per-call durations of each case, after warming each up (see `warm_up`).

    The cases take turns, `calls` calls each per round, the order reversed every other round: drift (CPU
    frequency, a neighbour's load) hits all of them alike, so their ratio stays fair. Async cases run on the
    caller's event loop (one caller at a time).
    """
    perf = time.perf_counter
    warmups = {case.name: await warm_up(case, min_s=budget.warmup_min_s, max_s=budget.warmup_max_s) for case in cases}
    samples: dict[str, list[float]] = {case.name: [] for case in cases}
    # Long-lived objects (models, records, the JVM's proxies) out of the collector's way: a full collection
    # costs ~0.1 s here and would land on whichever call happens to trigger it.
    gc.collect()
    gc.freeze()
    try:
        for round_index in range(rounds):
            order = list(cases) if round_index % 2 == 0 else list(reversed(cases))
            for case in order:
                timings = samples[case.name]
                if case.is_async:
                    async_call: Callable[[], Awaitable[Any]] = case.call
                    for _ in range(calls):
                        start = perf()
                        await async_call()
                        timings.append(perf() - start)
                else:
                    call = case.call
                    for _ in range(calls):
                        start = perf()
                        call()
                        timings.append(perf() - start)
    finally:
        gc.unfreeze()
    return Samples(samples, warmups)


def event_loop_name() -> str:
    """The event loop `run_async` uses: uvloop when installed (as uvicorn picks it), else asyncio's."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on the loop the platform's processes run on (uvicorn's `loop="auto"`: uvloop if installed)."""
    if event_loop_name() == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def percentile(samples: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `samples`, linearly interpolated."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(samples: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99 and mean of per-call durations, in microseconds, and the sample count."""
    return {
        "median_us": statistics.median(samples) * 1e6,
        "p90_us": percentile(samples, 90) * 1e6,
        "p99_us": percentile(samples, 99) * 1e6,
        "mean_us": statistics.fmean(samples) * 1e6,
        "samples": len(samples),
    }


def throughput_summary(samples: Sequence[float], rows: int) -> dict[str, float]:
    """Rows per second at the median call duration (and at the best and worst call)."""
    return {
        "rows_per_s": rows / statistics.median(samples),
        "best_rows_per_s": rows / min(samples),
        "worst_rows_per_s": rows / max(samples),
        "median_call_ms": statistics.median(samples) * 1e3,
        "calls": len(samples),
    }


def latencies(samples: Samples) -> dict[str, dict[str, float]]:
    """`latency_summary` of every case, with its warm-up time."""
    return {name: {**latency_summary(d), "warmup_s": samples.warmup_s[name]} for name, d in samples.durations.items()}


def throughputs(samples: Samples, rows: int) -> dict[str, dict[str, float]]:
    """`throughput_summary` of every case, with its warm-up time."""
    return {
        name: {**throughput_summary(d, rows), "warmup_s": samples.warmup_s[name]}
        for name, d in samples.durations.items()
    }


# --- output ------------------------------------------------------------------------------------------------


def format_value(value: float | None, unit: str) -> str:
    """A figure with its unit, at a precision that suits it."""
    if value is None:
        return "—"
    if unit in ("rows/s", "req/s"):
        return f"{value:,.0f} {unit}"
    if unit == "µs":
        return f"{value:,.1f} µs"
    if unit == "ms":
        return f"{value:,.2f} ms"
    return f"{value:,.3g} {unit}"


_STYLES = {"PASS": "bold green", "MISS": "bold red", "info": "dim"}


def render(section: SectionResult) -> Table:
    """The section's rich table: each figure beside its baseline, the ratio, the target and PASS/MISS."""
    table = Table(title=section.title, box=box.SIMPLE_HEAVY, title_justify="left", show_lines=False)
    table.add_column("Model / scenario", no_wrap=True)
    table.add_column("Measure")
    table.add_column(section.value_header, justify="right", no_wrap=True)
    table.add_column(section.baseline_header, justify="right", no_wrap=True)
    table.add_column("Ratio", justify="right", no_wrap=True)
    table.add_column("Target", justify="right", no_wrap=True)
    table.add_column("Result", justify="center", no_wrap=True)
    previous = None
    for row in section.rows:
        if previous is not None and row.subject != previous:
            table.add_section()
        first = row.subject != previous
        subject = Text(row.subject)
        if first:
            subject.append(f"\nvs {row.baseline_name}", style="dim")
        ratio = row.ratio
        table.add_row(
            subject if first else "",
            row.what,
            format_value(row.value, row.unit),
            format_value(row.baseline, row.unit),
            "—" if ratio is None else f"{ratio:.2f}×",
            str(row.target),
            Text(row.status, style=_STYLES[row.status]),
        )
        previous = row.subject
    return table


def environment() -> dict[str, Any]:
    """Where the figures were measured: machine, Python, engine versions and the checkout's commit."""
    versions: dict[str, str | None] = {}
    for package in ("onnxruntime", "jpmml-evaluator", "pypmml", "JPype1", "fastapi", "uvicorn", "aiohttp"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "git_commit": commit or None,
    }


def write_results(section: SectionResult, *, quick: bool, started: datetime, elapsed_s: float) -> Path:
    """Write the section's rows and metadata to `bench/results/<section>-<timestamp>.json`; return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{section.key}-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    document = {
        "section": section.key,
        "title": section.title,
        "quick": quick,
        "started_at": started.isoformat(),
        "elapsed_s": round(elapsed_s, 2),
        "environment": environment(),
        "baseline_header": section.baseline_header,
        "rows": [row.as_json() for row in section.rows],
        "notes": section.notes,
        "meta": section.meta,
        "error": section.error,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- model files and records -------------------------------------------------------------------------------

PMML_MODELS = ("random_forest", "linear_regression")
"""sklearn2pmml fixtures the sections use, converted together in one JVM."""


class ModelFiles:
    """The model files of `tests.fixtures.models`, generated on first use into one directory, then reused."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._onnx: dict[str, Path] = {}
        self._pmml: dict[str, Path] = {}

    def onnx(self, name: str) -> Path:
        """The ONNX fixture `name` (e.g. `random_forest`, `logistic_regression`)."""
        if name not in self._onnx:
            from tests.fixtures import models

            self.directory.mkdir(parents=True, exist_ok=True)
            self._onnx[name] = models.ONNX_MAKERS[name](self.directory)
        return self._onnx[name]

    def pmml(self, name: str) -> Path:
        """The sklearn2pmml fixture `name`; all of `PMML_MODELS` are converted on the first call (one JVM)."""
        if name not in self._pmml:
            from tests.fixtures import models

            wanted = sorted({*PMML_MODELS, name})
            self._pmml.update(models.make_sklearn_pmml(self.directory, wanted))
        return self._pmml[name]


@functools.cache
def _iris_records() -> tuple[dict[str, float], ...]:
    from tests.fixtures import models

    return tuple(models.iris_records(150))


def iris_rows(count: int, features: Sequence[str] | None = None) -> list[dict[str, float]]:
    """`count` iris records as users send them to a PMML model, the 150 rows cycled (optionally some columns)."""
    base = list(_iris_records())
    if features is not None:
        base = [{name: record[name] for name in features} for record in base]
    return [dict(base[i % len(base)]) for i in range(count)]


def onnx_rows(count: int) -> list[dict[str, list[float]]]:
    """`count` iris records in skl2onnx's single-tensor form, as users send them: `{"X": [4 floats]}`."""
    from tests.fixtures import models

    return [{"X": [record[name] for name in models.FEATURES]} for record in iris_rows(count)]
