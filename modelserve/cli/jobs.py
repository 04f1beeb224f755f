"""`modelserve jobs …` (batch job definitions, `run --watch`) and `modelserve runs …` (one run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from modelserve.cli.context import client
from modelserve.cli.output import EXIT_FAILED, JsonOpt, emit_json, err, fail, fields, out, table
from modelserve.cli.progress import transfer
from modelserve.cli.records import parse_data
from modelserve.types import BatchJob, Run

app = typer.Typer(help="Batch jobs: create, list, show, run (--watch), delete.", no_args_is_help=True)
runs_app = typer.Typer(help="One run of a batch job: show, pause, continue, stop, result.", no_args_is_help=True)


def _mapping(values: list[str]) -> dict[str, str | list[str]]:
    mapping: dict[str, str | list[str]] = {}
    for item in values:
        target, sep, source = item.partition("=")
        if not sep or not target or not source:
            fail(f"--map takes INPUT=column or INPUT=col1,col2,…; got {item!r}")
        columns = source.split(",")
        mapping[target] = columns if len(columns) > 1 else columns[0]
    return mapping


def show_run(run: Run) -> None:
    fields(
        [
            ("run", f"{run.job}#{run.number}"),
            ("status", run.status),
            ("rows", f"{run.rows_done}/{run.rows_total if run.rows_total is not None else '?'}"),
            ("result", run.result_dataset),
            ("error", run.error),
        ]
    )
    for line in run.log_tail[-10:]:
        out.print(f"  | {line}", highlight=False, markup=False)


def show_job(job: BatchJob) -> None:
    fields(
        [
            ("job", job.name),
            ("kind", job.kind),
            ("dispatch", job.dispatch),
            ("next run", job.next_run_at),
            ("params", job.params),
            ("last run", f"#{job.last_run.number} {job.last_run.status}" if job.last_run else None),
        ]
    )


@app.command("create")
def create(
    name: str,
    service: Annotated[str | None, typer.Option(help="Score with this service's model version.")] = None,
    model: Annotated[str | None, typer.Option(help="…or with this model (and --version).")] = None,
    version: Annotated[str | None, typer.Option(help="The model's version or alias.")] = None,
    input_dataset: Annotated[str | None, typer.Option("--input", help="Input dataset.")] = None,
    output_dataset: Annotated[str | None, typer.Option("--output", help="Output dataset (created by the run).")] = None,
    output_format: Annotated[str | None, typer.Option("--format", help="csv or parquet.")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="Rows per chunk (checkpoint interval).")] = None,
    map_: Annotated[
        list[str] | None, typer.Option("--map", help="INPUT=column or INPUT=col1,col2 (repeatable).")
    ] = None,
    cron: Annotated[str | None, typer.Option(help="Run on this cron schedule.")] = None,
    timezone: Annotated[str, typer.Option(help="The schedule's time zone.")] = "UTC",
    retries: Annotated[int | None, typer.Option(help="Retries of a failed run.")] = None,
    kind: Annotated[str, typer.Option(help="batch_predict or script.")] = "batch_predict",
    params: Annotated[str | None, typer.Option(help="All params as JSON (or @file.json), for any kind.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a batch job (on demand unless --cron)."""
    body: dict[str, Any] = parse_data(params) if params else {}
    if not isinstance(body, dict):
        fail("--params must be a JSON object")
    given = {
        "service": service,
        "model": model,
        "version": version,
        "input_dataset": input_dataset,
        "output_dataset": output_dataset,
        "output_format": output_format,
        "chunk_size": chunk_size,
    }
    body.update({k: v for k, v in given.items() if v is not None})
    if map_:
        body["input_mapping"] = _mapping(map_)
    with client() as ms:
        job = ms.create_job(
            name,
            body,
            kind=kind,
            dispatch="schedule" if cron else None,
            schedule={"cron": cron, "timezone": timezone} if cron else None,
            retries=retries,
        )
    if as_json:
        emit_json(job)
    else:
        show_job(job)


@app.command("list")
def list_jobs(limit: int = 50, offset: int = 0, as_json: JsonOpt = False) -> None:
    """List batch jobs with their last run."""
    with client() as ms:
        page = ms.list_jobs(limit=limit, offset=offset)
    if as_json:
        emit_json(page)
        return
    table(
        page.items,
        [
            ("name", lambda j: j.name),
            ("kind", lambda j: j.kind),
            ("dispatch", lambda j: j.dispatch),
            ("next run", lambda j: j.next_run_at),
            ("last run", lambda j: f"#{j.last_run.number} {j.last_run.status}" if j.last_run else None),
        ],
        title=f"{page.total} job(s)",
    )


@app.command("show")
def show(name: str, as_json: JsonOpt = False) -> None:
    """Show a batch job, its next fire and last run."""
    with client() as ms:
        job = ms.get_job(name)
    if as_json:
        emit_json(job)
    else:
        show_job(job)


@app.command("delete")
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a batch job and its runs."""
    if not yes and not as_json:
        typer.confirm(f"Delete batch job {name} and its runs?", abort=True)
    with client() as ms:
        ms.delete_job(name)
    if as_json:
        emit_json({"deleted": name})
    else:
        out.print(f"deleted batch job {name}")


@app.command("pause-schedule")
def pause_schedule(name: str, as_json: JsonOpt = False) -> None:
    """Pause a job's schedule (its runs stay)."""
    with client() as ms:
        job = ms.pause_schedule(name)
    emit_json(job) if as_json else show_job(job)


@app.command("resume-schedule")
def resume_schedule(name: str, as_json: JsonOpt = False) -> None:
    """Resume a job's schedule from now."""
    with client() as ms:
        job = ms.resume_schedule(name)
    emit_json(job) if as_json else show_job(job)


@app.command("script")
def script(
    service: Annotated[str, typer.Option(help="The service to score with.")],
    input_dataset: Annotated[str, typer.Option("--input", help="Input dataset.")],
    output_dataset: Annotated[str, typer.Option("--output", help="Output dataset.")],
) -> None:
    """Print a runnable scoring script for a dataset and a service."""
    with client() as ms:
        typer.echo(ms.generate_script(input_dataset, output_dataset, service))


@app.command("run")
def run(
    name: str,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow the run: progress bar, log; exit code from it.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to watch.")] = 3600,
    as_json: JsonOpt = False,
) -> None:
    """Start a run now; with --watch, follow it to its end (exit 0 only if it succeeded)."""
    with client() as ms:
        started = ms.run_job(name)
        if not watch:
            if as_json:
                emit_json(started)
            else:
                out.print(f"started {name}#{started.number} ({started.status})")
            return
        final = _watch(ms, name, started.number, timeout, quiet=as_json)
    _outcome(final, as_json)


def _watch(ms: Any, job: str, number: int, timeout: float, quiet: bool) -> Run:
    if quiet:
        final: Run = ms.wait_run(job, number, timeout=timeout)
        return final
    printed = 0
    bar = Progress(
        TextColumn(f"{job}#{number} " + "{task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=err,
    )
    with bar:
        task = bar.add_task("run", total=None, status="queued")

        def progress(current: Run) -> None:
            nonlocal printed
            # The log tail is the last lines: print the ones not printed yet (the tail may have moved on).
            tail = current.log_tail
            fresh = tail[printed:] if printed <= len(tail) else tail
            for line in fresh:
                bar.console.print(f"  | {line}", highlight=False, markup=False)
            printed = len(tail)
            bar.update(task, completed=current.rows_done, total=current.rows_total, status=current.status)

        final = ms.wait_run(job, number, timeout=timeout, progress=progress)
    return final


def _outcome(final: Run, as_json: bool) -> None:
    if as_json:
        emit_json(final)
    else:
        show_run(final)
    if final.status != "succeeded":
        raise typer.Exit(EXIT_FAILED)


@runs_app.command("list")
def list_runs(job: str, limit: int = 50, offset: int = 0, as_json: JsonOpt = False) -> None:
    """A job's runs, newest first."""
    with client() as ms:
        page = ms.list_runs(job, limit=limit, offset=offset)
    if as_json:
        emit_json(page)
        return
    table(
        page.items,
        [
            ("run", lambda r: r.number),
            ("status", lambda r: r.status),
            ("rows", lambda r: r.rows_done),
            ("of", lambda r: r.rows_total),
            ("result", lambda r: r.result_dataset),
        ],
        title=f"{page.total} run(s)",
    )


@runs_app.command("show")
def show_one(
    job: str,
    run: int,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Follow the run to its end.")] = False,
    timeout: float = 3600,
    as_json: JsonOpt = False,
) -> None:
    """Status, progress and log tail of a run."""
    with client() as ms:
        if watch:
            _outcome(_watch(ms, job, run, timeout, quiet=as_json), as_json)
            return
        current = ms.get_run(job, run)
    if as_json:
        emit_json(current)
    else:
        show_run(current)


def _action(job: str, run: int, action: str, as_json: bool) -> None:
    with client() as ms:
        current: Run = getattr(ms, f"{action}_run")(job, run)
    if as_json:
        emit_json(current)
    else:
        show_run(current)


@runs_app.command("pause")
def pause(job: str, run: int, as_json: JsonOpt = False) -> None:
    """Pause at the next chunk boundary."""
    _action(job, run, "pause", as_json)


@runs_app.command("continue")
def continue_(job: str, run: int, as_json: JsonOpt = False) -> None:
    """Continue a paused run from its checkpoint."""
    _action(job, run, "continue", as_json)


@runs_app.command("stop")
def stop(job: str, run: int, as_json: JsonOpt = False) -> None:
    """Stop at the next chunk boundary."""
    _action(job, run, "stop", as_json)


@runs_app.command("delete")
def delete_run(job: str, run: int, as_json: JsonOpt = False) -> None:
    """Delete an ended or paused run."""
    with client() as ms:
        ms.delete_run(job, run)
    if as_json:
        emit_json({"deleted": f"{job}#{run}"})
    else:
        out.print(f"deleted {job}#{run}")


@runs_app.command("result")
def result(
    job: str,
    run: int,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a run's result dataset."""
    with client() as ms:
        current = ms.get_run(job, run)
        if current.result_dataset is None:
            fail(f"{job}#{run} has no result ({current.status})", 4)
        dest = output or Path(f"{current.result_dataset}.out")
        if output is None:
            dataset = ms.get_dataset(current.result_dataset)
            dest = Path(f"{current.result_dataset}.{dataset.format or 'bin'}")
        with transfer(f"downloading {dest.name}", quiet=as_json) as progress:
            ms.download_result(job, run, dest, progress=progress)
    if as_json:
        emit_json({"path": str(dest), "dataset": current.result_dataset})
    else:
        out.print(f"wrote {dest}")
