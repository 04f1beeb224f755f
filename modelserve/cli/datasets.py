"""`modelserve datasets …`: push, fetch, list, show, download, delete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelserve.cli.context import client
from modelserve.cli.output import JsonOpt, emit_json, fail, fields, out, table
from modelserve.cli.progress import transfer
from modelserve.types import DatasetDetail

app = typer.Typer(help="Datasets for batch jobs: push, fetch, list, show, download, delete.", no_args_is_help=True)


def show_dataset(dataset: DatasetDetail) -> None:
    fields(
        [
            ("dataset", dataset.name),
            ("status", dataset.status),
            ("format", dataset.format),
            ("rows", dataset.rows),
            ("size", dataset.size_bytes),
        ]
    )
    if dataset.columns:
        table(dataset.columns, [("column", lambda c: c.name), ("type", lambda c: c.type)])
    if dataset.preview:
        names = list(dataset.preview[0])
        table(dataset.preview[:10], [(n, lambda r, n=n: r.get(n)) for n in names], title="first rows")  # type: ignore[misc]


@app.command("push")
def push(
    file: Annotated[Path, typer.Argument(help="A CSV, JSON lines or Parquet file.")],
    name: Annotated[str, typer.Option("--name", "-n", help="Dataset name.")],
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a dataset file."""
    if not file.is_file():
        fail(f"no such file: {file}")
    with client() as ms, transfer(f"uploading {file.name}", quiet=as_json) as progress:
        dataset = ms.upload_dataset(file, name, description=description, progress=progress)
    if as_json:
        emit_json(dataset)
    else:
        show_dataset(dataset)


@app.command("fetch")
def fetch(name: str, url: str, description: str | None = None, as_json: JsonOpt = False) -> None:
    """Register a remote dataset by URL; a worker fetches it (see `datasets show`)."""
    with client() as ms:
        dataset = ms.fetch_dataset(name, url, description=description)
    if as_json:
        emit_json(dataset)
    else:
        show_dataset(dataset)


@app.command("list")
def list_datasets(limit: int = 50, offset: int = 0, as_json: JsonOpt = False) -> None:
    """List datasets."""
    with client() as ms:
        page = ms.list_datasets(limit=limit, offset=offset)
    if as_json:
        emit_json(page)
        return
    table(
        page.items,
        [
            ("name", lambda d: d.name),
            ("status", lambda d: d.status),
            ("format", lambda d: d.format),
            ("rows", lambda d: d.rows),
            ("size", lambda d: d.size_bytes),
        ],
        title=f"{page.total} dataset(s)",
    )


@app.command("show")
def show(name: str, as_json: JsonOpt = False) -> None:
    """Columns, types, rows and the first rows of a dataset."""
    with client() as ms:
        dataset = ms.get_dataset(name)
    if as_json:
        emit_json(dataset)
    else:
        show_dataset(dataset)


@app.command("download")
def download(
    name: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download a dataset's file, byte-identical."""
    with client() as ms:
        dataset = ms.get_dataset(name)
        dest = output or Path(f"{name}.{dataset.format or 'bin'}")
        with transfer(f"downloading {dest.name}", quiet=as_json) as progress:
            ms.download_dataset(name, dest, progress=progress)
    if as_json:
        emit_json({"path": str(dest)})
    else:
        out.print(f"wrote {dest}")


@app.command("delete")
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a dataset and its file."""
    if not yes and not as_json:
        typer.confirm(f"Delete dataset {name}?", abort=True)
    with client() as ms:
        ms.delete_dataset(name)
    if as_json:
        emit_json({"deleted": name})
    else:
        out.print(f"deleted dataset {name}")
