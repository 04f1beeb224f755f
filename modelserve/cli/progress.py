"""Progress bars and spinners (on stderr; quiet when --json asks for clean output)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from modelserve._operations import Progress as ProgressCallback
from modelserve.cli.output import err


@contextmanager
def transfer(description: str, quiet: bool = False) -> Iterator[ProgressCallback | None]:
    """A byte progress bar; yields the client's `progress(done, total)` callback."""
    if quiet:
        yield None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update
