"""Section `batch`: `batch_predict` of a large CSV through the iris random forest (ONNX), against a raw pipeline.

1. Inputs: CSVs of `id` (int64) + the four iris features (floats drawn over the iris ranges, 2 decimals), made
   with numpy + pyarrow: 100,000 and 1,000,000 rows (100,000 and 300,000 with --quick).
2. Baseline, the raw pipeline, every run in a fresh process (`python -m bench.batch baseline …`, so its RSS is
   its own): `pyarrow.csv.open_csv` streaming read → `[n, 4]` float32 → `onnxruntime.InferenceSession.run` per
   batch of the modelserve job's chunk size (the probability tensor under the model's ZipMap fetched, as
   modelserve does) → input columns + `label` + `probability_<class>` → one `pyarrow.csv.CSVWriter`. Timed from
   the start of the read to the output file closed (session made and warmed on one row before); peak RSS = the
   process' `VmHWM`.
3. modelserve: `modelserve up` (embedded default, fresh data dir), the same ONNX file uploaded, each CSV uploaded
   as a dataset (`POST /api/v1/datasets`), one `batch_predict` job per size (model + version, CSV output, default
   chunk size, `input_mapping` `X` = the four columns), a 10,000-row warm-up run first (not counted: it loads the
   model into the worker). A run: `POST …/runs`, then `GET …/runs/{n}` every 0.1 s until it ends; rows/s = rows /
   the run's own `duration_seconds` (claimed → finished: scoring, concatenating the parts and registering the
   output dataset). While it runs, the RSS of the platform's `modelserve worker` process is sampled every 50 ms,
   and its kernel high-water mark `VmHWM` is reset before the run and read after. Each run's output dataset must
   have the input's row count; at the smallest size the result is downloaded and compared with the baseline's
   output (ids and labels equal, probabilities within 1e-6).

Rounds (5; 2 with --quick), all on the one platform: each size in ascending order, the script and a modelserve
run in turns (which goes first alternates). Throughput = the median run. Targets (issue 7): modelserve rows/s ≥
0.5× the raw pipeline at the largest size; worker peak RSS < 512 MB at the largest size (highest of all runs), and
flat: in round 1, peak at the largest ≤ 1.2× the peak at the smallest. Loopback only; every process started here
is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
RANGES = {"sepal_length": (4.3, 7.9), "sepal_width": (2.0, 4.4), "petal_length": (1.0, 6.9), "petal_width": (0.1, 2.5)}
SIZES = (100_000, 1_000_000)
QUICK_SIZES = (100_000, 300_000)
ROUNDS = 5
QUICK_ROUNDS = 2
WARMUP_ROWS = 10_000
MODEL_NAME = "iris-rf"
RSS_LIMIT_MB = 512.0
FLAT_LIMIT = 1.2
SPEED_TARGET = 0.5
SAMPLE_EVERY_S = 0.05
POLL_EVERY_S = 0.1
RUN_TIMEOUT_S = 900.0
BASELINE_TIMEOUT_S = 600.0
MB = 1024 * 1024


# --- input files ---------------------------------------------------------------------------------------------


def make_csv(path: Path, rows: int, seed: int = 7) -> Path:
    """`id` + the four iris features (uniform over the iris ranges, rounded to 2 decimals), written by pyarrow."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {"id": pa.array(np.arange(rows, dtype=np.int64))}
    for name in FEATURES:
        low, high = RANGES[name]
        columns[name] = pa.array(np.round(rng.uniform(low, high, rows), 2))
    pacsv.write_csv(pa.table(columns), path)
    return path


# --- the raw pipeline (its own process) ------------------------------------------------------------------------


def _session_and_outputs(model_path: Path, intra: int, inter: int) -> tuple[Any, list[str], list[tuple[str, str]]]:
    """The session (ZipMap tensors exposed as outputs), what to fetch, and (output, column name) pairs.

    skl2onnx classifiers end in a ZipMap (one Python dict per row from onnxruntime); a raw pipeline that writes
    columns fetches the probability tensor the ZipMap zips instead, as modelserve does.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    zipmaps: dict[str, tuple[str, list[str]]] = {}  # ZipMap output -> (its input tensor, class label per column)
    for node in model.graph.node:
        if node.op_type == "ZipMap" and len(node.input) == 1:
            attributes = {a.name: a for a in node.attribute}
            if "classlabels_int64s" in attributes and attributes["classlabels_int64s"].ints:
                labels = [str(v) for v in attributes["classlabels_int64s"].ints]
            else:
                labels = [v.decode() for v in attributes["classlabels_strings"].strings]
            zipmaps[node.output[0]] = (node.input[0], labels)
    for tensor, _labels in zipmaps.values():
        model.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = inter
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fetch: list[str] = []
    columns: list[tuple[str, str]] = []
    for output in model.graph.output:
        if output.name in zipmaps or output.name in {t for t, _ in zipmaps.values()}:
            continue
        fetch.append(output.name)
        columns.append((output.name, "label" if "label" in output.name else output.name))
    for tensor, labels in zipmaps.values():
        fetch.append(tensor)
        columns += [(f"{tensor}[{j}]", f"probability_{label}") for j, label in enumerate(labels)]
    return session, fetch, columns


def _status_mb(field: str, pid: int | str = "self") -> float | None:
    """A memory line of /proc/PID/status (`VmRSS`, `VmHWM`: the peak RSS of the process' memory map), in MB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def baseline_main(argv: list[str] | None = None) -> int:
    """`python -m bench.batch baseline --model M --input CSV --output CSV --batch-size N`: prints a JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.batch baseline")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--inter-op-threads", type=int, default=1)
    args = parser.parse_args(argv)

    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    session, fetch, columns = _session_and_outputs(args.model, args.intra_op_threads, args.inter_op_threads)
    input_name = session.get_inputs()[0].name
    perf = time.perf_counter
    rows = 0
    batches = 0
    inference_s = 0.0
    writer: pacsv.CSVWriter | None = None

    def scored(table: pa.Table) -> pa.Table:
        nonlocal inference_s
        x = np.column_stack([table.column(name).to_numpy() for name in FEATURES]).astype(np.float32)
        call = perf()
        results = dict(zip(fetch, session.run(fetch, {input_name: x}), strict=True))
        inference_s += perf() - call
        for output, column in columns:
            if output.endswith("]"):
                tensor, j = output[:-1].split("[")
                value = results[tensor][:, int(j)]
            else:
                value = results[output]
            table = table.append_column(column, pa.array(value))
        return table

    # Warm, untimed: ChunkedArray.to_numpy imports pandas on first use (~0.3 s here), onnxruntime's first run.
    scored(pa.table({"id": [0], **{name: [1.0] for name in FEATURES}}))
    inference_s = 0.0
    rss_ready = _status_mb("VmRSS")
    started = perf()

    def score(table: pa.Table) -> None:
        nonlocal writer, rows, batches
        table = scored(table)
        if writer is None:
            writer = pacsv.CSVWriter(args.output, table.schema)
        writer.write_table(table)
        rows += table.num_rows
        batches += 1

    pending: list[pa.RecordBatch] = []
    buffered = 0
    with pacsv.open_csv(args.input) as reader:
        for batch in reader:
            pending.append(batch)
            buffered += batch.num_rows
            while buffered >= args.batch_size:
                table = pa.Table.from_batches(pending)
                score(table.slice(0, args.batch_size))
                rest = table.slice(args.batch_size)
                pending, buffered = rest.to_batches(), rest.num_rows
    if buffered:
        score(pa.Table.from_batches(pending))
    if writer is not None:
        writer.close()
    elapsed = perf() - started
    # getrusage's ru_maxrss is not this program's own peak: Linux keeps the larger of it and the RSS the process
    # had before its execve, and a child forked by a big parent starts with the parent's RSS mapped. VmHWM is the
    # high-water mark of the memory map made at execve, i.e. of this program alone.
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    answer = {
        "rows": rows,
        "batches": batches,
        "batch_size": args.batch_size,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed if elapsed else None,
        "inference_s": inference_s,
        "peak_rss_mb": _status_mb("VmHWM"),
        "ru_maxrss_mb": peak_kb / 1024,
        "rss_before_read_mb": rss_ready,
        "output_bytes": args.output.stat().st_size,
        "fetched": fetch,
        "onnx_threads": {"intra_op": args.intra_op_threads, "inter_op": args.inter_op_threads},
    }
    json.dump(answer, sys.stdout)
    sys.stdout.write("\n")
    return 0


def run_baseline(model: Path, source: Path, output: Path, batch_size: int, threads: tuple[int, int]) -> dict[str, Any]:
    """One raw-pipeline run in a fresh process; its JSON answer."""
    from bench.common import REPO_ROOT
    from bench.endpoint import EndpointError, _clean_env

    argv = [sys.executable, "-m", "bench.batch", "baseline", "--model", str(model), "--input", str(source)]
    argv += ["--output", str(output), "--batch-size", str(batch_size)]
    argv += ["--intra-op-threads", str(threads[0]), "--inter-op-threads", str(threads[1])]
    done = subprocess.run(argv, capture_output=True, text=True, env=_clean_env(), cwd=REPO_ROOT,
                          timeout=BASELINE_TIMEOUT_S, check=False)  # fmt: skip
    if done.returncode != 0:
        raise EndpointError(f"baseline pipeline failed ({done.returncode}): {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- watching the worker's memory ----------------------------------------------------------------------------


def _reset_hwm(pid: int) -> bool:
    """Reset the process' `VmHWM` to its current RSS (writing 5 to /proc/PID/clear_refs); False when refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


class RssSampler:
    """RSS of some processes every `every` seconds in a thread: the peak of each, and how many samples."""

    def __init__(self, pids: dict[str, int], every: float = SAMPLE_EVERY_S) -> None:
        import psutil

        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.every = every
        self.peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.samples = 0
        self.series: list[tuple[float, dict[str, float]]] = []
        """(seconds since start, {process: RSS in MB}) of every sample."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        import psutil

        started = time.perf_counter()
        while True:
            sample: dict[str, float] = {}
            for name, process in self.processes.items():
                with suppress(psutil.Error):
                    rss = process.memory_info().rss
                    self.peak[name] = max(self.peak[name], rss)
                    sample[name] = round(rss / MB, 1)
            self.series.append((round(time.perf_counter() - started, 3), sample))
            self.samples += 1
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _platform_processes(up_pid: int) -> dict[str, int]:
    """Pids of the `modelserve worker` and registry children of `modelserve up`."""
    import psutil

    from bench.endpoint import EndpointError

    deadline = time.monotonic() + 30
    while True:
        found: dict[str, int] = {}
        for child in psutil.Process(up_pid).children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if "modelserve.server" in cmdline and cmdline[-1] == "worker":
                found["worker"] = child.pid
            elif "modelserve.server" in cmdline and "registry" in cmdline:
                found["registry"] = child.pid
        if "worker" in found:
            return found
        if time.monotonic() > deadline:
            raise EndpointError("no `modelserve worker` child of `modelserve up` found in 30 s")
        time.sleep(0.2)


# --- modelserve ----------------------------------------------------------------------------------------------


def _check(answer: Any, status: int, what: str) -> dict[str, Any]:
    from bench.endpoint import EndpointError

    if answer.status_code != status:
        raise EndpointError(f"{what} answered {answer.status_code}: {answer.text[:2000]}")
    body: dict[str, Any] = answer.json()
    return body


def _upload_dataset(client: Any, name: str, path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        answer = client.post("/api/v1/datasets", data={"name": name}, files={"file": (path.name, fh, "text/csv")})
    return _check(answer, 201, f"POST /api/v1/datasets ({name})")


def _setup(client: Any, rows: int, source: Path) -> dict[str, Any]:
    """Upload `source` as dataset `iris-<rows>` and create the job `score-<rows>` scoring it; what was made."""
    from bench.endpoint import EndpointError

    dataset, job, output = f"iris-{rows}", f"score-{rows}", f"iris-{rows}-scored"
    clock = time.perf_counter()
    uploaded = _upload_dataset(client, dataset, source)
    upload_s = time.perf_counter() - clock
    if uploaded.get("rows") != rows:
        raise EndpointError(f"dataset {dataset} has {uploaded.get('rows')} rows, not {rows}")
    params = {"model": MODEL_NAME, "version": "1", "input_dataset": dataset, "output_dataset": output,
              "output_format": "csv", "input_mapping": {"X": list(FEATURES)}}  # fmt: skip
    created = client.post("/api/v1/batch-jobs", json={"name": job, "kind": "batch_predict",
                                                      "dispatch": "on_demand", "params": params})  # fmt: skip
    created_job = _check(created, 201, f"POST /api/v1/batch-jobs ({job})")
    return {"job": job, "dataset_upload_s": upload_s, "input_bytes": source.stat().st_size,
            "chunk_size": created_job["params"].get("chunk_size")}  # fmt: skip


def _one_run(client: Any, pids: dict[str, int], rows: int, job: str) -> dict[str, Any]:
    """Start a run of `job`, wait for its end; the run's figures, the worker's RSS during it, the checks."""
    import psutil

    from bench.endpoint import EndpointError

    worker = psutil.Process(pids["worker"])
    rss_before = worker.memory_info().rss / MB
    hwm_reset = _reset_hwm(pids["worker"])
    timeline: dict[str, float] = {}
    perf = time.perf_counter
    with RssSampler(pids) as sampler:
        posted = perf()
        started = _check(client.post(f"/api/v1/batch-jobs/{job}/runs"), 202, f"POST /api/v1/batch-jobs/{job}/runs")
        url = f"/api/v1/batch-jobs/{job}/runs/{started['number']}"
        deadline = posted + RUN_TIMEOUT_S
        while True:
            run = _check(client.get(url), 200, f"GET {url}")
            now = perf() - posted
            if run["status"] == "running":
                timeline.setdefault("seen_running_s", now)
            if run["rows_done"] >= rows and run["status"] == "running":
                timeline.setdefault("seen_all_rows_scored_s", now)
            if run["status"] in ("succeeded", "failed", "stopped"):
                timeline["seen_ended_s"] = now
                break
            if perf() > deadline:
                raise EndpointError(f"run {url} not ended in {RUN_TIMEOUT_S:g} s: {run}")
            time.sleep(POLL_EVERY_S)
    hwm = _status_mb("VmHWM", pids["worker"]) if hwm_reset else None
    sampled_peak = sampler.peak["worker"] / MB
    figures: dict[str, Any] = {
        "rows": rows,
        "status": run["status"],
        "error": run.get("error"),
        "duration_s": run.get("duration_seconds"),
        "rows_per_s": rows / run["duration_seconds"] if run.get("duration_seconds") else None,
        "wall_s_post_to_ended": timeline["seen_ended_s"],
        "timeline": timeline,
        "run": run.get("number"),
        "attempt": run.get("attempt"),
        "rows_done": run.get("rows_done"),
        "log_tail": run.get("log_tail"),
        "worker_rss_before_mb": rss_before,
        "worker_rss_after_mb": worker.memory_info().rss / MB,
        "worker_peak_rss_sampled_mb": sampled_peak,
        "worker_vmhwm_mb": hwm,
        "worker_peak_rss_mb": max(sampled_peak, hwm or 0.0),
        "registry_peak_rss_sampled_mb": sampler.peak.get("registry", 0) / MB or None,
        "rss_samples": sampler.samples,
        "rss_series_mb": sampler.series[:: max(1, len(sampler.series) // 400)],
    }
    if run["status"] != "succeeded":
        raise EndpointError(f"run {url} ended {run['status']}: {run.get('error')}\n{run.get('log_tail')}")
    result = _check(client.get(f"/api/v1/datasets/{run['result_dataset']}"), 200, "GET the result dataset")
    figures["result_dataset"] = run["result_dataset"]
    figures["result_rows"] = result.get("rows")
    figures["result_bytes"] = result.get("size_bytes")
    figures["result_columns"] = [c["name"] for c in result.get("columns", [])]
    if result.get("rows") != rows or run.get("rows_done") != rows:
        raise EndpointError(f"run {url}: {rows} rows in, result has {result.get('rows')} (rows_done "
                            f"{run.get('rows_done')})")  # fmt: skip
    return figures


def _compare(client: Any, rows: int, baseline_output: Path) -> dict[str, Any]:
    """The run's result beside the baseline's output for the same input: same ids, labels, probabilities."""
    import io

    import numpy as np
    import pyarrow.csv as pacsv

    answer = client.get(f"/api/v1/batch-jobs/score-{rows}/runs/1/result")
    if answer.status_code != 200:
        return {"compared": False, "reason": f"result download answered {answer.status_code}"}
    ours = pacsv.read_csv(io.BytesIO(answer.content))
    theirs = pacsv.read_csv(baseline_output)
    out: dict[str, Any] = {"compared": True, "rows": [ours.num_rows, theirs.num_rows],
                           "same_columns": ours.column_names == theirs.column_names,
                           "columns": ours.column_names}  # fmt: skip
    if ours.num_rows != theirs.num_rows:
        return out
    out["same_ids"] = bool(np.array_equal(ours.column("id").to_numpy(), theirs.column("id").to_numpy()))
    out["same_labels"] = bool(np.array_equal(ours.column("label").to_numpy(), theirs.column("label").to_numpy()))
    worst = 0.0
    for name in theirs.column_names:
        if name.startswith("probability_") and name in ours.column_names:
            a = ours.column(name).to_numpy().astype(np.float64)
            b = theirs.column(name).to_numpy().astype(np.float64)
            worst = max(worst, float(np.max(np.abs(a - b))))
    out["max_probability_difference"] = worst
    out["agree"] = bool(out["same_ids"] and out["same_labels"] and worst <= 1e-6)
    return out


def _measure(
    model: Path, inputs: dict[int, Path], outputs: dict[int, Path], chunk_size: int, threads: tuple[int, int],
    rounds: int, work_dir: Path, meta: dict[str, Any], ours: dict[int, list[dict[str, Any]]],
    theirs: dict[int, list[dict[str, Any]]],
) -> None:  # fmt: skip
    """`rounds` rounds, each: every size (ascending) through the script and through a modelserve run, the two
    in turns (which goes first alternates every round), all while the platform is up. Runs are appended to
    `ours` / `theirs` by size as they end (what was measured stays if a later run fails)."""
    import httpx

    from bench.endpoint import modelserve_platform
    from bench.services import upload_model

    log = work_dir / "batch-modelserve-up.log"
    with modelserve_platform(work_dir / "batch-data", log) as platform:
        pids = _platform_processes(platform.pid)
        meta["platform_pids"] = pids
        headers = {"Authorization": f"Bearer {platform.admin_key}"}
        with httpx.Client(base_url=platform.url, headers=headers, timeout=600) as client:
            upload_model(client, MODEL_NAME, model)
            # Not counted: the worker's first run loads the model and imports the batch code; the script's timing
            # starts after its session is made and warmed, so both sides are measured warm.
            warmup = make_csv(work_dir / "batch" / f"iris-{WARMUP_ROWS}.csv", WARMUP_ROWS, seed=3)
            meta["warmup_run"] = _one_run(client, pids, WARMUP_ROWS, _setup(client, WARMUP_ROWS, warmup)["job"])
            jobs = {rows: _setup(client, rows, path) for rows, path in inputs.items()}
            meta["jobs"] = jobs
            for index in range(rounds):
                for rows, path in inputs.items():
                    sides = ["script", "modelserve"] if index % 2 == 0 else ["modelserve", "script"]
                    for side in sides:
                        if side == "script":
                            theirs[rows].append(run_baseline(model, path, outputs[rows], chunk_size, threads))
                        else:
                            ours[rows].append({**jobs[rows], **_one_run(client, pids, rows, jobs[rows]["job"])})
            smallest = min(inputs)
            meta["agreement_with_baseline"] = {smallest: _compare(client, smallest, outputs[smallest])}


# --- the section ---------------------------------------------------------------------------------------------


def _summary(runs: list[dict[str, Any]], seconds_key: str) -> dict[str, Any]:
    """The median run's rows/s, the peak RSS over the runs, every run."""
    if not runs:
        return {}
    seconds = statistics.median(r[seconds_key] for r in runs)
    return {"rows_per_s": runs[0]["rows"] / seconds, "seconds": seconds, "runs": runs}


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without its runs (those are in the section's meta, once), for a row's details."""
    return {key: value for key, value in summary.items() if key != "runs"}


def run(files: Any, budget: Any, work_dir: Path) -> Any:
    """Inputs, then rounds of script / modelserve runs at each size on one platform; rows."""
    from bench.common import INFO, QUICK, Row, SectionResult, Target
    from bench.endpoint import EndpointError
    from registry.batch_jobs import BatchPredictParams
    from shared.settings import Settings

    quick = budget == QUICK
    sizes = QUICK_SIZES if quick else SIZES
    rounds = QUICK_ROUNDS if quick else ROUNDS
    largest, smallest = max(sizes), min(sizes)
    chunk_size = int(BatchPredictParams.model_fields["chunk_size"].default)
    defaults = Settings.model_fields
    threads = (int(defaults["onnx_intra_op_threads"].default), int(defaults["onnx_inter_op_threads"].default))
    model = files.onnx("random_forest")
    result = SectionResult(
        key="batch",
        title=f"Batch predict, CSV in -> CSV out, ONNX iris RF: modelserve batch job vs a pyarrow + onnxruntime "
        f"script (chunks of {chunk_size:,} rows, median of {rounds} runs)",
    )
    directory = work_dir / "batch"
    directory.mkdir(parents=True, exist_ok=True)
    inputs: dict[int, Path] = {}
    clock = time.perf_counter()
    for rows in sizes:
        inputs[rows] = make_csv(directory / f"iris-{rows}.csv", rows)
    result.meta["inputs_made_s"] = time.perf_counter() - clock
    result.meta["input_bytes"] = {rows: path.stat().st_size for rows, path in inputs.items()}
    outputs = {rows: directory / f"baseline-{rows}.csv" for rows in sizes}
    ours: dict[int, list[dict[str, Any]]] = {rows: [] for rows in sizes}
    theirs: dict[int, list[dict[str, Any]]] = {rows: [] for rows in sizes}
    try:
        _measure(model, inputs, outputs, chunk_size, threads, rounds, work_dir, result.meta, ours, theirs)
    except EndpointError as exc:
        result.error = str(exc)
    modelserve = {rows: _summary(ours.get(rows, []), "duration_s") for rows in sizes}
    baseline = {rows: _summary(theirs.get(rows, []), "seconds") for rows in sizes}
    for rows in sizes:
        if ours.get(rows):
            modelserve[rows]["worker_peak_rss_mb"] = max(r["worker_peak_rss_mb"] for r in ours[rows])
            modelserve[rows]["first_run_worker_peak_rss_mb"] = ours[rows][0]["worker_peak_rss_mb"]
        if theirs.get(rows):
            baseline[rows]["peak_rss_mb"] = max(r["peak_rss_mb"] or r["ru_maxrss_mb"] for r in theirs[rows])
    script = "pyarrow+onnxruntime script"
    for rows in sizes:
        mine, base = modelserve[rows], baseline[rows]
        details = {"modelserve": _brief(mine), "baseline": _brief(base)}
        subject = f"ONNX iris RF, {rows:,} rows"
        speed = Target("min", SPEED_TARGET) if rows == largest else INFO
        result.rows += [
            Row(subject, "CSV -> CSV throughput (run duration)", "rows/s", mine.get("rows_per_s"), script,
                base.get("rows_per_s"), speed, details),
            Row(subject, "peak RSS (round 1): modelserve worker vs the script", "MB",
                mine.get("first_run_worker_peak_rss_mb"), script, base.get("peak_rss_mb"), INFO, details),
        ]  # fmt: skip
    large, small = modelserve[largest], modelserve[smallest]
    peaks = {
        "largest": large.get("first_run_worker_peak_rss_mb"),
        "smallest": small.get("first_run_worker_peak_rss_mb"),
    }
    result.rows += [
        Row("worker peak RSS", f"during the {largest:,}-row runs, vs the limit", "MB", large.get("worker_peak_rss_mb"),
            f"{RSS_LIMIT_MB:.0f} MB limit", RSS_LIMIT_MB, Target("max", 1.0), {"modelserve": _brief(large)}),
        Row("worker RSS flatness", f"peak at {largest:,} rows ÷ peak at {smallest:,} rows (round 1)", "MB",
            peaks["largest"], f"peak at {smallest:,} rows", peaks["smallest"], Target("max", FLAT_LIMIT), peaks),
        Row("script RSS flatness", f"peak at {largest:,} rows ÷ peak at {smallest:,} rows (for comparison)", "MB",
            baseline[largest].get("peak_rss_mb"), f"script's peak at {smallest:,} rows",
            baseline[smallest].get("peak_rss_mb"), INFO, {"script": {r: _brief(b) for r, b in baseline.items()}}),
    ]  # fmt: skip
    _notes(result, sizes, chunk_size, threads, rounds, modelserve, baseline)
    result.meta.update({"sizes": list(sizes), "rounds": rounds, "chunk_size": chunk_size, "onnx_threads": threads,
                        "modelserve": modelserve, "baseline": baseline})  # fmt: skip
    return result


def _notes(
    result: Any, sizes: tuple[int, ...], chunk_size: int, threads: tuple[int, int], rounds: int,
    modelserve: dict[int, Any], baseline: dict[int, Any],
) -> None:  # fmt: skip
    agreement = result.meta.get("agreement_with_baseline", {})
    for rows, check in agreement.items():
        if check.get("compared") and not check.get("agree"):
            result.notes.append(f"modelserve's output at {rows:,} rows differs from the script's: {check}")
    result.notes += [
        "Throughput: modelserve = rows / the run's duration_seconds (claimed by the worker -> finished: read, "
        "score, write one part file per chunk and report progress to the registry after each, concatenate the "
        "parts, upload the output to the registry, which parses it whole to register the dataset); script = rows / "
        "(start of the CSV read -> output file closed), each run in a fresh process. Median of "
        f"{rounds} runs each, script and modelserve in turns, all while the platform is up. Ratio = modelserve / "
        "script.",
        f"Both score in chunks of {chunk_size:,} rows (the job's default chunk_size) with onnxruntime "
        f"intra_op={threads[0]}, inter_op={threads[1]} threads (modelserve's onnx_*_threads defaults, "
        "graph optimisation 'all' = onnxruntime's default); the script fetches the probability tensor under the "
        "model's ZipMap, as modelserve does, and writes float32 probabilities (modelserve writes them as float64).",
        f"modelserve runs on a warm worker: a {WARMUP_ROWS:,}-row run first (not counted) loads the model and the "
        "batch code; the script's timing starts once its session is made and warmed on one row.",
        "Worker peak RSS = the larger of the `modelserve worker` process' RSS sampled every 50 ms during a run "
        "and its VmHWM (reset just before the run): absolute RSS of the long-lived non-forking RQ worker, imports "
        "and loaded model included; the limit row takes the highest over all runs at the largest size. Per-size "
        "and flatness rows: round 1 only (smallest size then largest, after the warm-up run, in the same "
        "worker); flatness value = peak at the largest size, baseline = peak at the smallest. Script peak RSS = "
        "its VmHWM (getrusage's ru_maxrss would report the bench process' RSS at fork: Linux carries it over the "
        "execve).",
    ]
    for rows in sizes:
        ours, theirs = modelserve.get(rows) or {}, baseline.get(rows) or {}
        parts = [f"{rows:,} rows:"]
        if ours.get("runs"):
            runs = ours["runs"]
            finishing = [r["timeline"]["seen_ended_s"] - r["timeline"]["seen_all_rows_scored_s"] for r in runs
                         if "seen_all_rows_scored_s" in r["timeline"]]  # fmt: skip
            parts.append(
                f"modelserve runs {[round(r['duration_s'], 2) for r in runs]} s (POST -> seen ended, median "
                f"{statistics.median(r['wall_s_post_to_ended'] for r in runs):.2f} s; all rows scored -> seen "
                f"ended, median {statistics.median(finishing) if finishing else float('nan'):.2f} s); worker RSS "
                f"{runs[0]['worker_rss_before_mb']:.0f} MB before its first run, peak "
                f"{runs[0]['worker_peak_rss_mb']:.0f} MB in it, {ours['worker_peak_rss_mb']:.0f} MB at most;"
            )  # fmt: skip
        if theirs.get("runs"):
            parts.append(
                f"script runs {[round(r['seconds'], 2) for r in theirs['runs']]} s (onnxruntime "
                f"{statistics.median(r['inference_s'] for r in theirs['runs']):.2f} s of them), its own peak RSS "
                f"{theirs['peak_rss_mb']:.0f} MB."
            )
        result.notes.append(" ".join(parts))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "baseline":
        sys.exit(baseline_main(sys.argv[2:]))
    sys.exit("usage: python -m bench.batch baseline --model M --input CSV --output CSV --batch-size N")
