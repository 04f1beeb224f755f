"""Access logs: the direct JSON path writes what the logging path writes, batched per event-loop iteration."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from shared import logging as shared_logging
from shared.logging import configure_logging, log_access


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The process's logging as `configure_logging` sets it up, writing JSON lines to a buffer."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_logging("testproc", "INFO", json_logs=True)
    try:
        yield stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        monkeypatch.setattr(shared_logging, "_fast_handler", None)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_direct_access_line_matches_the_logging_path(json_logs: io.StringIO) -> None:
    logger = logging.getLogger("modelserve.access")
    log_access(logger, "POST", "/api/v1/services/s/predict", 200, 1.25, "rid-1")  # direct path
    logger.info(
        "%s %s %d",
        "POST",
        "/api/v1/services/s/predict",
        200,
        extra={"status": 200, "duration_ms": 1.25, "request_id": "rid-1"},
    )
    direct, ordinary = _lines(json_logs)
    assert str(direct.pop("ts")).endswith("Z") and str(ordinary.pop("ts")).endswith("Z")
    assert list(direct) == list(ordinary)
    assert (
        direct
        == ordinary
        == {
            "level": "info",
            "logger": "modelserve.access",
            "process": "testproc",
            "msg": "POST /api/v1/services/s/predict 200",
            "request_id": "rid-1",
            "status": 200,
            "duration_ms": 1.25,
        }
    )


def test_a_listening_handler_gets_access_records(json_logs: io.StringIO, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log_access(logging.getLogger("modelserve.access"), "GET", "/x", 404, 0.5, "rid-2")
    assert [(r.getMessage(), r.request_id) for r in caplog.records] == [("GET /x 404", "rid-2")]  # type: ignore[attr-defined]


def test_a_disabled_level_writes_nothing(json_logs: io.StringIO) -> None:
    logger = logging.getLogger("modelserve.access")
    logger.setLevel(logging.WARNING)
    try:
        log_access(logger, "GET", "/x", 200, 0.5, "rid-3")
    finally:
        logger.setLevel(logging.NOTSET)
    assert json_logs.getvalue() == ""


async def test_lines_of_one_loop_iteration_go_out_together_and_in_order(json_logs: io.StringIO) -> None:
    logger = logging.getLogger("modelserve.access")
    for i in range(5):
        log_access(logger, "GET", f"/n/{i}", 200, 0.1, f"rid-{i}")
    logging.getLogger("modelserve.other").warning("after the five")
    assert json_logs.getvalue() == ""  # still pending until the loop turns
    await asyncio.sleep(0)
    lines = _lines(json_logs)
    assert [line["msg"] for line in lines] == [*(f"GET /n/{i} 200" for i in range(5)), "after the five"]


def test_off_the_loop_lines_are_written_at_once(json_logs: io.StringIO) -> None:
    logging.getLogger("modelserve.other").warning("now")
    assert _lines(json_logs)[0]["msg"] == "now"


async def test_flush_writes_what_is_pending(json_logs: io.StringIO) -> None:
    log_access(logging.getLogger("modelserve.access"), "GET", "/p", 200, 0.1, "rid-p")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert _lines(json_logs)[0]["msg"] == "GET /p 200"


async def test_a_broken_stream_does_not_spin_the_loop(json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    handler = logging.getLogger().handlers[0]

    def broken(_text: str) -> int:
        raise BrokenPipeError("stderr closed")

    monkeypatch.setattr(json_logs, "write", broken)
    log_access(logging.getLogger("modelserve.access"), "GET", "/b", 200, 0.1, "rid-b")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert handler._pending == [] and handler._scheduled is False  # type: ignore[attr-defined]
