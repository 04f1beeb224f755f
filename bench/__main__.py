"""`python -m bench` (`make bench`): run the benchmark sections, print their tables, write their JSON files.

python -m bench                      # every section (~3 minutes on 2 cores)
python -m bench --quick              # fewer iterations, shorter load runs (~1 minute): a smoke run
python -m bench --only runtime --only pmml
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `tests.fixtures` and the platform's packages, whatever the cwd
    sys.path.insert(0, str(REPO_ROOT))

import psutil  # noqa: E402
from rich.console import Console  # noqa: E402

from bench.common import FULL, QUICK, Budget, ModelFiles, SectionResult, render, utc_now, write_results  # noqa: E402

SECTIONS = ("runtime", "pmml", "endpoint", "services", "async", "batch", "v2")
BUSY_PERCENT = 20.0
"""Warn when other processes use more than this share of the CPUs just before a section starts."""

SectionRunner = Callable[[ModelFiles, Budget, Path], SectionResult]


def _runner(key: str) -> SectionRunner:
    # Imported on use: `--only endpoint` need not load onnxruntime or start a JVM in this process.
    if key == "runtime":
        from bench import runtime_overhead

        return runtime_overhead.run
    if key == "pmml":
        from bench import pmml_engines

        return pmml_engines.run
    if key == "services":
        from bench import services

        return services.run
    if key == "async":
        from bench import async_path

        return async_path.run
    if key == "batch":
        from bench import batch

        return batch.run
    if key == "v2":
        from bench import v2_transports

        return v2_transports.run
    from bench import endpoint

    return endpoint.run


def _others_cpu_percent(interval: float) -> float:
    """Share of all CPUs (0-100) used by processes other than this one and its children, over `interval` s."""
    me = psutil.Process()
    mine = [me, *me.children(recursive=True)]
    before = [p.cpu_times() for p in mine]
    psutil.cpu_percent(None)
    time.sleep(interval)
    total = psutil.cpu_percent(None)
    used = 0.0
    for process, start in zip(mine, before, strict=True):
        try:
            now = process.cpu_times()
        except psutil.Error:
            continue
        used += (now.user + now.system) - (start.user + start.system)
    own = 100.0 * used / (interval * (os.cpu_count() or 1))
    return max(0.0, total - own)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="modelserve benchmarks: each figure beside a baseline measured in the same run.",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help=f"run only this section (repeatable; default: all, in the order {', '.join(SECTIONS)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations and shorter load runs (smoke run)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections; exit status 1 when a section could not run (a MISS is not a failure)."""
    args = parse_args(argv)
    chosen = [key for key in SECTIONS if not args.only or key in args.only]
    budget = QUICK if args.quick else FULL
    console = Console(width=max(Console().width, 165))
    failed: list[str] = []
    started_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modelserve-bench-") as tmp:
        work_dir = Path(tmp)
        files = ModelFiles(work_dir / "models")
        for key in chosen:
            started, clock = utc_now(), time.perf_counter()
            console.rule(f"[bold]{key}[/bold]")
            busy = _others_cpu_percent(0.5)
            if busy > BUSY_PERCENT:
                console.print(
                    f"[yellow]other processes use {busy:.0f}% of the {os.cpu_count()} CPUs: "
                    "figures will be noisy (ratios less so: cases are interleaved)[/yellow]"
                )
            try:
                section = _runner(key)(files, budget, work_dir)
            except Exception:
                failed.append(key)
                error = traceback.format_exc()
                console.print(f"[bold red]section {key} failed:[/bold red]\n{error}")
                section = SectionResult(key=key, title=f"{key} (failed)", error=error)
            elapsed = time.perf_counter() - clock
            section.meta["machine_busy_percent_before"] = busy
            section.meta["load_average_after"] = os.getloadavg()
            if section.rows:
                console.print(render(section))
            for note in section.notes:
                console.print(f"  [dim]• {note}[/dim]")
            if section.error and key not in failed:
                failed.append(key)
                console.print(f"[bold red]section {key} reported an error:[/bold red]\n{section.error}")
            path = write_results(section, quick=args.quick, started=started, elapsed_s=elapsed)
            console.print(f"  [dim]{elapsed:.1f} s; results: {path.relative_to(REPO_ROOT)}[/dim]\n")
    total = time.perf_counter() - started_all
    summary = f"{len(chosen) - len(failed)}/{len(chosen)} sections ran in {total:.0f} s"
    console.print(f"[bold]{summary}[/bold]" + (f" [red](failed: {', '.join(failed)})[/red]" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
