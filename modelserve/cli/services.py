"""`modelserve deploy`, `modelserve services …` and `modelserve predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelserve.cli.context import client
from modelserve.cli.models import DataOpt, FileOpt, print_predictions
from modelserve.cli.output import EXIT_FAILED, JsonOpt, emit_json, err, fields, out, table
from modelserve.cli.records import records_argument
from modelserve.types import Service

app = typer.Typer(help="Services: list, show, scale, pause, start, delete, restart replicas.", no_args_is_help=True)
queue_app = typer.Typer(help="Queued (async) predictions: show, cancel, list.", no_args_is_help=True)
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait.")]


def show_service(service: Service) -> None:
    fields(
        [
            ("service", service.name),
            ("model", service.model),
            ("version", service.version),
            ("alias", service.alias),
            ("status", service.status),
            ("reason", service.reason),
            ("replicas", f"{service.ready_replicas}/{service.replicas} ready"),
            ("predict", service.rest_url),
            ("v2", service.v2_url),
        ]
    )
    if service.replica_list:
        table(
            service.replica_list,
            [
                ("replica", lambda r: r.id),
                ("status", lambda r: r.status),
                ("version", lambda r: getattr(r, "version", None)),
                ("pid", lambda r: getattr(r, "pid", None)),
                ("restarts", lambda r: getattr(r, "restarts", None)),
            ],
        )


def _result(service: Service, as_json: bool) -> None:
    if as_json:
        emit_json(service)
    else:
        show_service(service)


def deploy(
    model: Annotated[str, typer.Argument(help="The model to serve.")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Service name (default: the model's).")] = None,
    version: Annotated[int | None, typer.Option(help="Pin this version (default: latest).")] = None,
    alias: Annotated[str | None, typer.Option(help="Follow this alias (rolls when it moves).")] = None,
    replicas: Annotated[int, typer.Option(help="Replica processes.")] = 1,
    cpu_reserve: Annotated[float | None, typer.Option(help="Cores reserved per replica.")] = None,
    memory_reserve: Annotated[int | None, typer.Option(help="MiB reserved per replica.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Return once every replica is ready.")] = False,
    timeout: TimeoutOpt = 120,
    as_json: JsonOpt = False,
) -> None:
    """Deploy a model version as a named service."""
    with client() as ms:
        if wait and not as_json:
            with err.status(f"deploying {name or model}: waiting for {replicas} replica(s)…"):
                service = ms.deploy(
                    model,
                    name,
                    version=version,
                    alias=alias,
                    replicas=replicas,
                    cpu_reserve=cpu_reserve,
                    memory_reserve=memory_reserve,
                    wait=True,
                    timeout=timeout,
                )
        else:
            service = ms.deploy(
                model,
                name,
                version=version,
                alias=alias,
                replicas=replicas,
                cpu_reserve=cpu_reserve,
                memory_reserve=memory_reserve,
                wait=wait,
                timeout=timeout,
            )
    _result(service, as_json)


@app.command("list")
def list_services(limit: int = 50, offset: int = 0, as_json: JsonOpt = False) -> None:
    """List services with their status and replicas."""
    with client() as ms:
        page = ms.list_services(limit=limit, offset=offset)
    if as_json:
        emit_json(page)
        return
    table(
        page.items,
        [
            ("name", lambda s: s.name),
            ("model", lambda s: s.model),
            ("version", lambda s: s.version),
            ("alias", lambda s: s.alias),
            ("status", lambda s: s.status),
            ("ready", lambda s: f"{s.ready_replicas}/{s.replicas}"),
        ],
        title=f"{page.total} service(s)",
    )


@app.command("show")
def show(name: str, as_json: JsonOpt = False) -> None:
    """Show a service, its status and replicas."""
    with client() as ms:
        _result(ms.get_service(name), as_json)


@app.command("scale")
def scale(name: str, replicas: int, as_json: JsonOpt = False) -> None:
    """Change the number of replicas."""
    with client() as ms:
        _result(ms.scale(name, replicas), as_json)


@app.command("update")
def update(
    name: str,
    version: Annotated[int | None, typer.Option(help="Pin this version.")] = None,
    alias: Annotated[str | None, typer.Option(help="Follow this alias.")] = None,
    cpu_reserve: Annotated[float | None, typer.Option(help="Cores per replica.")] = None,
    memory_reserve: Annotated[int | None, typer.Option(help="MiB per replica.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-point a service at a version or alias, or change its reservations."""
    with client() as ms:
        _result(
            ms.update_service(
                name,
                version=version,
                alias=alias,
                cpu_reserve=cpu_reserve,
                memory_reserve=memory_reserve,
                description=description,
            ),
            as_json,
        )


@app.command("wait")
def wait_ready(name: str, timeout: TimeoutOpt = 120, as_json: JsonOpt = False) -> None:
    """Wait until every replica is ready and the gateway routes to the service."""
    with client() as ms, err.status(f"waiting for {name}…"):
        _result(ms.wait_service(name, timeout), as_json)


@app.command("pause")
def pause(name: str, as_json: JsonOpt = False) -> None:
    """Stop the replicas (predict answers 503 until start)."""
    with client() as ms:
        _result(ms.pause(name), as_json)


@app.command("start")
def start(name: str, as_json: JsonOpt = False) -> None:
    """Start a paused service."""
    with client() as ms:
        _result(ms.start(name), as_json)


@app.command("restart-replica")
def restart_replica(name: str, replica_id: str, as_json: JsonOpt = False) -> None:
    """Restart one replica (see `services show` for the ids)."""
    with client() as ms:
        _result(ms.restart_replica(name, replica_id), as_json)


@app.command("delete")
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a service and stop its replicas."""
    if not yes and not as_json:
        typer.confirm(f"Delete service {name}?", abort=True)
    with client() as ms:
        ms.delete_service(name)
    if as_json:
        emit_json({"deleted": name})
    else:
        out.print(f"deleted service {name}")


def predict(
    service: Annotated[str, typer.Argument(help="The service to call.")],
    data: DataOpt = None,
    file: FileOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write predictions to CSV (or .json).")] = None,
    queued: Annotated[
        bool, typer.Option("--async", help="Queue the prediction (wait return); prints the job.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="With --async: wait for the job's result.")] = False,
    timeout: TimeoutOpt = 120,
    as_json: JsonOpt = False,
) -> None:
    """Predict with a service: records as JSON (--data) or a CSV/JSON file (--file)."""
    records = records_argument(data, file)
    with client() as ms:
        if not queued:
            print_predictions(ms.predict(service, records), output, file, as_json)
            return
        if isinstance(records, Path):
            from modelserve.cli.files import read_records

            records = read_records(records)
        job = ms.submit(service, records)
        if not wait:
            if as_json:
                emit_json(job)
            else:
                out.print(f"queued {job.id} (modelserve queue show {job.id} --wait)")
            return
        with err.status(f"waiting for {job.id}…"):
            job = ms.wait(job.id, timeout)
    _finish_job(job, output, file, as_json)


def _finish_job(job: object, output: Path | None, source: Path | None, as_json: bool) -> None:
    from modelserve.types import AsyncJob, Predictions

    assert isinstance(job, AsyncJob)
    if job.status == "succeeded" and job.predictions is not None:
        print_predictions(Predictions(predictions=job.predictions), output, source, as_json)
        return
    if as_json:
        emit_json(job)
    else:
        err.print(f"job {job.id} {job.status}: {job.error}", highlight=False)
    raise typer.Exit(EXIT_FAILED if job.done else 0)


@queue_app.command("show")
def queue_show(
    job_id: str,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to end.")] = False,
    timeout: TimeoutOpt = 120,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write predictions to CSV (or .json).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Status and result of a queued prediction."""
    with client() as ms:
        job = ms.wait(job_id, timeout) if wait else ms.result(job_id)
    if job.done or wait:
        _finish_job(job, output, None, as_json)
    elif as_json:
        emit_json(job)
    else:
        out.print(f"job {job.id}: {job.status}")


@queue_app.command("cancel")
def queue_cancel(job_id: str, as_json: JsonOpt = False) -> None:
    """Cancel a queued prediction (only while queued)."""
    with client() as ms:
        job = ms.cancel(job_id)
    if as_json:
        emit_json(job)
    else:
        out.print(f"job {job.id}: {job.status}")


@queue_app.command("list")
def queue_list(
    service: str,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed or cancelled")] = None,
    limit: int = 50,
    offset: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Recent queued predictions of a service."""
    with client() as ms:
        page = ms.list_async_jobs(service, status=status, limit=limit, offset=offset)
    if as_json:
        emit_json(page)
        return
    table(
        page.items,
        [("id", lambda j: j.id), ("status", lambda j: j.status), ("created", lambda j: getattr(j, "created_at", None))],
        title=f"{page.total} job(s)",
    )
