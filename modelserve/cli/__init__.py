"""The `modelserve` command: the platform's server commands (`up`, `gateway`, `registry`, …, from `modelserve.server`)
and a client command for every API operation (`login`, `models`, `deploy`, `services`, `predict`, `datasets`,
`jobs`, `runs`, `keys`, `queue`).

Exit codes: 0 ok; 1 what the command waited for failed (a run, a queued prediction, a conversion check);
2 usage or configuration; 3 authentication/authorisation (401/403); 4 not found or another client error (4xx);
5 server error, unreachable platform or a wait that timed out.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from modelserve.cli import datasets, jobs, keys, models, services
from modelserve.cli.context import Connection
from modelserve.cli.output import JsonOpt, State, emit_json, fail, out, report_error
from modelserve.errors import ModelServeError

app = typer.Typer(
    help="modelserve: serve PMML and ONNX models as HTTP services, and use them from the command line.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def connection(
    url: Annotated[
        str | None, typer.Option(envvar="MODELSERVE_URL", help="The platform's URL.", show_envvar=True)
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="MODELSERVE_API_KEY", help="API key (default: `modelserve login`'s).")
    ] = None,
) -> None:
    """Client commands reach the platform at --url with --api-key (or what `modelserve login` stored)."""
    Connection.url, Connection.api_key = url, api_key


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="The platform's URL, e.g. http://127.0.0.1:8000")],
    key: Annotated[
        str | None, typer.Option("--key", envvar="MODELSERVE_API_KEY", help="The API key (else asked).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check URL and key against the platform and store them (mode 0600) for the other commands."""
    from modelserve.client import Client
    from modelserve.config import save

    if not key:
        # A pipe (`echo $KEY | modelserve login URL`) or the prompt, never the command line's history.
        key = typer.prompt("API key", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not key:
        fail("no API key given (--key, MODELSERVE_API_KEY or the prompt)")
    with Client(url, key) as ms:
        ms.list_models(limit=1)  # proves the URL and the key (401/403 exit 3)
    path = save(url, key)
    if as_json:
        emit_json({"url": url.rstrip("/"), "config": str(path)})
    else:
        out.print(f"logged in to {url.rstrip('/')} (stored in {path})")


app.add_typer(models.app, name="models")
app.command("deploy")(services.deploy)
app.add_typer(services.app, name="services")
app.command("predict")(services.predict)
app.add_typer(services.queue_app, name="queue")
app.add_typer(datasets.app, name="datasets")
app.add_typer(jobs.app, name="jobs")
app.add_typer(jobs.runs_app, name="runs")
app.add_typer(keys.app, name="keys")


def _mount_server_commands() -> None:
    """`modelserve up`, `gateway`, `registry`, `inference`, `worker`, `scheduler`, … (`modelserve.server`)."""
    from modelserve import server as server_cli

    ours = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    for command in server_cli.app.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else None)
        if name not in ours:
            app.registered_commands.append(command)


_mount_server_commands()


def main() -> None:
    State.json = "--json" in sys.argv[1:]
    try:
        app()  # standalone: usage errors exit 2, `typer.Exit(code)` exits with its code
    except ModelServeError as exc:
        sys.exit(report_error(exc))


if __name__ == "__main__":
    main()
