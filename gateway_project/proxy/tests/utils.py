from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpResponseBase


def access_claims(**overrides: Any) -> dict[str, Any]:
    """Claims of a valid access token for user 7; an override of None removes the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.JWT_ISSUER,
        "aud": settings.JWT_AUDIENCE,
        "sub": "7",
        "iat": now,
        "exp": now + 300,
        "typ": "access",
        "staff": False,
    }
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


def body_of(response: HttpResponseBase) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)  # type: ignore[attr-defined]
    return response.content  # type: ignore[attr-defined]


def json_of(response: HttpResponseBase) -> Any:
    return json.loads(body_of(response))


def closed_port_url() -> str:
    """A loopback address nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class RawServer:
    """Accepts connections on 127.0.0.1 and lets ``serve(conn)`` answer each, on its own thread."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted = 0
        self._serve = serve
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    return data
