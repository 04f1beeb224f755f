"""Structured logging: JSON lines when stderr is not a TTY, one request id per request."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
"""The current request's id; set by the request-id middleware, read by logs and internal calls."""

REQUEST_ID_HEADER = "X-Request-ID"
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, process name, request id, message and extras."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    _second: int = -1
    _second_text: str = ""

    def timestamp(self, created: float) -> str:
        """`created` as UTC ISO 8601 with milliseconds (the seconds part formatted once per second)."""
        second = int(created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process_name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and key != "request_id" and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


class _LoopBatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes the lines logged during one event-loop iteration with one write.

    Under load the access log is one line per request; a write (a system call) for each was a visible share
    of the gateway's CPU. Off an event loop (worker threads, the CLI) each line is written at once, after any
    still pending, so the order holds; `flush()` (also run by `logging.shutdown` at exit) writes what is left.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """A formatted line, written at once off an event loop, else with the rest of this loop iteration's."""
        with self.lock:  # type: ignore[union-attr]  # an RLock: `emit` already holds it
            self._pending.append(line + self.terminator)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._write_pending()
                return
            if not self._scheduled:
                self._scheduled = True
                loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            try:
                self._write_pending()
            except Exception:  # stderr gone (a closed pipe): raising here would be logged, and fail again
                self._pending.clear()

    def _write_pending(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self.stream.write(text)
            self.stream.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            try:
                self._write_pending()
            except Exception:  # a closed stream at exit: nothing left to tell
                self._pending.clear()
            super().flush()


def log_access(logger: logging.Logger, method: str, path: str, status: int, duration_ms: float, rid: str) -> None:
    """One access-log line, as `logger.info("%s %s %d", method, path, status, extra=...)` would write it.

    When the process logs as `configure_logging` set it up (JSON lines, our one handler, nothing else listening)
    the line is formatted here directly: building a LogRecord and passing it along the logging machinery was
    most of the access log's cost per request. Any other set-up (a test's capture handler, text logs, another
    handler or filter) takes the ordinary path.
    """
    handler = _fast_handler
    root = logging.root
    if (
        handler is not None
        and logger.propagate
        and not logger.handlers
        and not logger.filters
        and len(root.handlers) == 1
        and root.handlers[0] is handler
        and len(handler.filters) == 1
        and logger.isEnabledFor(logging.INFO)
        and handler.level <= logging.INFO
    ):
        try:
            handler.write_line(_access_line(handler, logger.name, method, path, status, duration_ms, rid))
        except Exception:  # a log line never fails the request it describes (stderr gone, say)
            handler._pending.clear()
        return
    logger.info(
        "%s %s %d", method, path, status, extra={"status": status, "duration_ms": duration_ms, "request_id": rid}
    )


def _access_line(
    handler: _LoopBatchedHandler, name: str, method: str, path: str, status: int, duration_ms: float, rid: str
) -> str:
    formatter = handler.formatter
    assert isinstance(formatter, JsonFormatter)
    now = time.time()
    entry = {
        "ts": formatter.timestamp(now),
        "level": "info",
        "logger": name,
        "process": formatter.process_name,
        "msg": f"{method} {path} {status}",
        "request_id": rid,
        "status": status,
        "duration_ms": duration_ms,
    }
    return orjson.dumps(entry, default=str).decode()


_fast_handler: _LoopBatchedHandler | None = None
"""The handler `configure_logging` installed with JSON lines, for `log_access`'s direct path."""


def configure_logging(process_name: str, level: str = "INFO", json_logs: bool | None = None) -> None:
    """Set the root logger up once per process."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    # Nothing prints the caller's file, thread or pid (the process is named): skip collecting them per record,
    # as the logging HOWTO's "Optimization" section suggests.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _LoopBatchedHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if json_logs:
        handler.setFormatter(JsonFormatter(process_name))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-7s [{process_name}] %(name)s [%(request_id)s] %(message)s")
        )
    global _fast_handler
    _fast_handler = handler if json_logs else None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log prints raw request lines; ours (without headers or secrets) replaces it.
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpcore", "py4j", "rq.worker", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
