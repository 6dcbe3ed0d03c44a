"""The floor of an asyncio gateway: an ASGI forwarder under gunicorn's own ASGI worker, its upstream
connections asyncio protocols parsed by ``httptools`` (llhttp), kept alive in a pool per worker, and
nothing else (no token, no rate limit, no log, no span). Compared with ``wsgi_floor.py`` it shows what the
server and the client alone would cost if the gateway's proxied path moved to asyncio.

``BENCH_TARGET`` names the upstream (``http://127.0.0.1:PORT``); bench/run.py starts it as ``floor-asgi``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httptools

_TARGET = urlsplit(os.environ["BENCH_TARGET"])
_HOST_HEADER = f"{_TARGET.hostname}:{_TARGET.port}".encode()
_DROPPED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"})


class _Upstream(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("closed"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def on_message_begin(self) -> None:
        self.headers, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), self.headers, b"".join(self.body)))


_idle: list[_Upstream] = []


async def _forward(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, list, bytes]:
    loop = asyncio.get_running_loop()
    connection = _idle.pop() if _idle else (await loop.create_connection(_Upstream, _TARGET.hostname, _TARGET.port))[1]
    connection.waiter = loop.create_future()
    lines = b"".join(b"%s: %s\r\n" % header for header in headers)
    assert connection.transport is not None
    connection.transport.write(b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (method, target, _HOST_HEADER, lines))
    try:
        answer = await connection.waiter
    except Exception:
        connection.transport.close()
        raise
    _idle.append(connection)
    return answer


Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    headers = [(name, value) for name, value in scope["headers"] if name not in _DROPPED and name != b"host"]
    try:
        status, answer_headers, body = await _forward(scope["method"].encode(), target, headers)
    except (OSError, httptools.HttpParserError):
        status, answer_headers, body = 502, [], b""
    kept = [(name, value) for name, value in answer_headers if name.lower() not in _DROPPED]
    kept.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": body})
