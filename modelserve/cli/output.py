"""How the CLI prints: rich tables for people, `--json` for scripts, one readable line for an error.

Results go to stdout; progress bars, spinners and errors go to stderr, so `--json` output can be piped.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from modelserve.errors import ApiError, ModelServeError

out = Console(soft_wrap=True)
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")]

EXIT_FAILED = 1
"""The command ran, but what it waited for failed (a batch run, an async prediction, a conversion check)."""
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_CLIENT = 4
EXIT_SERVER = 5


class State:
    json = False


def jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(jsonable(value), indent=2, default=str) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def table(rows: Iterable[Any], columns: Sequence[tuple[str, Callable[[Any], Any]]], title: str | None = None) -> None:
    grid = Table(title=title, show_lines=False, header_style="bold")
    for name, _ in columns:
        grid.add_column(name)
    for row in rows:
        grid.add_row(*(_cell(get(row)) for _, get in columns))
    out.print(grid)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """A key/value block (`show` commands)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in pairs:
        grid.add_row(key, _cell(value))
    out.print(grid)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def report_error(exc: ModelServeError) -> int:
    """Print the error (one line; JSON with --json) and return its exit code."""
    if State.json and isinstance(exc, ApiError):
        body = {
            "status": exc.status,
            "title": exc.title,
            "detail": exc.detail,
            "errors": exc.errors,
            "type": exc.type,
            "instance": exc.instance,
            **exc.extra,
        }
        sys.stderr.write(json.dumps(body, default=str) + "\n")
    else:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return exc.exit_code
