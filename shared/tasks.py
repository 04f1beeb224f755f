"""Stopping background tasks without ever hanging a shutdown."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[object] | asyncio.Task[None], timeout: float = 2.0) -> None:
    """Cancel `task` and wait at most `timeout` seconds (a task that swallows the cancel is logged, not awaited)."""
    if task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=timeout)
    if not done:
        log.warning("background task %s did not stop within %.0fs", task.get_name(), timeout)
