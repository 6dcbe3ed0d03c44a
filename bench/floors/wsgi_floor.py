"""The floor of the gateway's present architecture: a WSGI forwarder under gunicorn's gthread worker with a
per-thread ``http.client`` keep-alive connection, as ``proxy/connections.py`` kept them before llhttp, and nothing else
(no Django, no token, no rate limit, no log, no span). What the gateway costs above this is its features.

``BENCH_TARGET`` names the upstream (``http://127.0.0.1:PORT``); bench/run.py starts it as ``floor-wsgi``.
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

_TARGET = urlsplit(os.environ["BENCH_TARGET"])
_DROPPED = frozenset({"connection", "keep-alive", "transfer-encoding", "date", "server"})
_local = threading.local()


def _connection() -> http.client.HTTPConnection:
    connection: http.client.HTTPConnection | None = getattr(_local, "connection", None)
    if connection is None:
        connection = _local.connection = http.client.HTTPConnection(_TARGET.hostname or "", _TARGET.port, timeout=10)
    return connection


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    headers = {
        key[5:].replace("_", "-").title(): value
        for key, value in environ.items()
        if key.startswith("HTTP_") and key not in ("HTTP_HOST", "HTTP_CONNECTION")
    }
    connection = _connection()
    try:
        connection.request(environ["REQUEST_METHOD"], environ.get("RAW_URI") or environ["PATH_INFO"], headers=headers)
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        connection.close()  # reopened by the next request
        start_response("502 Bad Gateway", [("Content-Length", "0")])
        return [b""]
    kept = [(name, value) for name, value in response.getheaders() if name.lower() not in _DROPPED]
    start_response(f"{response.status} {response.reason}", kept)
    return [body]
