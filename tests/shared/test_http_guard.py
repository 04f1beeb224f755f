"""Read timeouts of the HTTP servers: slow-header (slowloris) and stalled-body clients are cut off, others served."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from shared import http_guard
from shared.http_guard import GuardedHttpToolsProtocol
from tests.conftest import free_port


class _Server:
    def __init__(self, app: FastAPI, **config: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off",
                             http=GuardedHttpToolsProtocol, **config)  # type: ignore[arg-type]  # fmt: skip
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    monkeypatch.setenv("MODELSERVE_HTTP_HEADER_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("MODELSERVE_HTTP_BODY_IDLE_TIMEOUT_SECONDS", "1")
    http_guard._timeouts.cache_clear()
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    with _Server(app, limit_concurrency=1000) as running:
        yield running
    http_guard._timeouts.cache_clear()


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bytes:
    """Read until the server closes; meanwhile send `trickle` one byte at a time (a slowloris client)."""
    sock.settimeout(0.2)
    received = b""
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        if sent < len(trickle):
            try:
                sock.send(trickle[sent : sent + 1])
                sent += 1
            except OSError:
                return received or b"<reset>"
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received or b"<reset>"
        if not chunk:
            return received or b"<closed>"
        received += chunk
    raise AssertionError(f"connection still open after {seconds}s (got {received!r})")


def test_slow_header_connections_are_closed_and_others_served(server: _Server) -> None:
    slow = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n")  # a request head that never ends
        slow.append(sock)
    idle = socket.create_connection(("127.0.0.1", server.port))  # connects and sends nothing at all
    try:
        assert httpx.get(f"{server.url}/ok", timeout=10).json() == {"ok": True}  # served while they hang
        trickled = _closed_within(slow[0], 30, trickle=b"X-Slow: " + b"a" * 200)
        assert trickled.startswith(b"HTTP/1.1 408") or trickled in (b"<closed>", b"<reset>")
        for sock in slow[1:]:
            answer = _closed_within(sock, 30)
            assert answer.startswith(b"HTTP/1.1 408"), answer
        assert _closed_within(idle, 30).startswith(b"HTTP/1.1 408")
        assert httpx.get(f"{server.url}/ok", timeout=10).json() == {"ok": True}
    finally:
        for sock in [*slow, idle]:
            sock.close()


def test_a_stalled_body_is_cut_off_and_a_steady_one_is_not(server: _Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        answer = _closed_within(sock, 30)  # 90 bytes never come
        assert b" 200 " not in answer
    finally:
        sock.close()

    def steady() -> Iterator[bytes]:
        for _ in range(6):  # 3 s in all, longer than both timeouts, but never idle for 1 s
            time.sleep(0.5)
            yield b"b" * 10

    resp = httpx.post(f"{server.url}/echo", content=steady(), headers={"Content-Length": "60"}, timeout=30)
    assert resp.json() == {"bytes": 60}


def test_a_kept_alive_connection_is_not_cut_by_an_earlier_requests_timer(server: _Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(10)
    try:
        for _ in range(3):  # 3 requests over ~2 s on one connection, each head sent at once
            sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"ok":true}'):
                chunk = sock.recv(4096)
                assert chunk, f"closed after {answer!r}"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
            time.sleep(0.7)
    finally:
        sock.close()
