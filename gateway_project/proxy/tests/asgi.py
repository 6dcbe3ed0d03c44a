"""Calling the gateway's ASGI application in the test process, as gunicorn's ASGI worker calls it: a scope
as the server builds it, the body in ``http.request`` messages, the answer collected from ``send``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from proxy import connections
from proxy.edge import ASGIApp


@dataclass
class Answer:
    status: int
    header_list: list[tuple[str, str]]
    body: bytes
    body_messages: int = 0

    def header(self, name: str) -> str | None:
        """The first value of a header, its name in any case."""
        return next((value for key, value in self.header_list if key.lower() == name.lower()), None)


def scope_for(
    method: str, target: str, headers: dict[str, str] | list[tuple[str, str]], *, client: str
) -> dict[str, Any]:
    raw_path, _, query = target.partition("?")
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if not any(name.lower() == "host" for name, _ in items):
        items.insert(0, ("Host", "testserver"))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in items],
        "server": ("testserver", 80),
        "client": (client, 50000),
    }


async def _call(
    app: ASGIApp,
    scope: dict[str, Any],
    body_parts: list[bytes],
    disconnect_after_body: bool,
    disconnect_after_chunks: int | None,
) -> Answer:
    incoming = [
        {"type": "http.request", "body": part, "more_body": i < len(body_parts) - 1}
        for i, part in enumerate(body_parts)
    ]
    if not incoming:
        incoming = [{"type": "http.request", "body": b"", "more_body": False}]
    disconnected = asyncio.Event()
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            message = incoming.pop(0)
            if disconnect_after_body and not incoming:
                message["more_body"] = True  # the client promised more, then went away
            return message
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if disconnect_after_chunks is not None and len(chunks) >= disconnect_after_chunks:
            return  # as gunicorn does once the client is gone: nothing is sent, nothing fails
        if message["type"] == "http.response.start":
            start.update(message)
        else:
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False) or len(chunks) == disconnect_after_chunks:
                disconnected.set()

    if disconnect_after_body:
        disconnected.set()
    await app(scope, receive, send)
    connections.close_all()  # this loop's idle connections: it ends with the call
    header_list = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in start["headers"]]
    return Answer(start["status"], header_list, b"".join(chunks), len(chunks))


def call(
    app: ASGIApp,
    method: str,
    target: str,
    *,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes | list[bytes] = b"",
    client: str = "127.0.0.1",
    disconnect_after_body: bool = False,
    disconnect_after_chunks: int | None = None,
) -> Answer:
    """One request through ``app`` on a new event loop. ``body`` as a list: one ``http.request`` message
    per part, as a chunked body arrives. ``disconnect_after_body``: the client goes away before its body
    ends; ``disconnect_after_chunks``: once it has that many chunks of the answer's body."""
    parts = body if isinstance(body, list) else ([body] if body else [])
    with database_connection_kept():
        scope = scope_for(method, target, headers or {}, client=client)
        return asyncio.run(_call(app, scope, parts, disconnect_after_body, disconnect_after_chunks))


def call_together(app: ASGIApp, requests: list[tuple[str, str, dict[str, str]]]) -> list[Answer]:
    """Several requests (method, target, headers) through ``app`` at once, on one event loop."""

    async def together() -> list[Answer]:
        scopes = [scope_for(method, target, headers, client="127.0.0.1") for method, target, headers in requests]
        return list(await asyncio.gather(*(_call(app, scope, [], False, None) for scope in scopes)))

    with database_connection_kept():
        return asyncio.run(together())


@contextlib.contextmanager
def database_connection_kept() -> Iterator[None]:
    """As Django's test client does: the handlers' signals must not close the test's database connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
