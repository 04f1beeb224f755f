"""Read timeouts for the public HTTP server, which uvicorn does not have.

uvicorn closes idle keep-alive connections, but a connection that sends its request line or headers slowly
(slowloris), or stalls in the middle of a body, stays open forever and holds a slot of its connection cap.
`GuardedHttpToolsProtocol` is uvicorn's httptools protocol with two timers:

- the **header timeout**: the whole request head (request line and headers) must arrive within
  `http_header_timeout_seconds` of the connection opening, or of the first byte of a later keep-alive request;
  past it the server answers 408 and closes the connection;
- the **body idle timeout**: while a request body is being read, the client must send some bytes at least
  every `http_body_idle_timeout_seconds`, else the connection is closed (the app sees a disconnect). Time the
  server itself stops reading (the app is slow to consume the body) does not count against the client.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.settings import Settings

_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@cache
def _timeouts() -> tuple[float, float]:
    settings = Settings()
    return settings.http_header_timeout_seconds, settings.http_body_idle_timeout_seconds


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a body idle timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout, self._body_timeout = _timeouts()
        self._read_timer: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, handler: Any) -> None:
        self._disarm()
        if seconds > 0:
            self._read_timer = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._header_timeout, self._header_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_timer is None:  # a later request on a kept-alive connection: its head has the same limit
            self._arm(self._header_timeout, self._header_timed_out)

    def on_headers_complete(self) -> None:
        self._arm(self._body_timeout, self._body_timed_out)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._arm(self._body_timeout, self._body_timed_out)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _header_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.flow is not None and self.flow.read_paused:
            # The server stopped reading (the app has not consumed what came): not the client's delay.
            self._arm(self._body_timeout, self._body_timed_out)
            return
        self.transport.close()
