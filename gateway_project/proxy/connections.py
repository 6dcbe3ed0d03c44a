"""Keep-alive connections to the services for :func:`proxy.upstream.send`: one per instance per thread,
with ``http.client``.

Why not urllib3's pool, which the health checks keep? A proxied request pays the client's own work on
every call, and urllib3 adds ≈ 120 µs of bookkeeping to ``http.client``'s (pool lookup and queue, retry
and timeout objects, its response wrapper): measured ≈ 390-460 µs against ≈ 280 µs per call
(PERFORMANCE.md, bench/README.md). gunicorn's gthread worker serves a request on one thread from the first
byte to the last, the body's streaming included, so a connection kept per thread is never shared: no pool
and no lock are needed (the overview's calls run on a long-lived executor's threads, each with its own
connections). A connection is taken out of its thread's table while a response uses it and put back once
that response was read to its end (a partly read one is closed: what is left would be taken for the next
response).

Failures raise urllib3's exception classes (``NewConnectionError``/``ConnectTimeoutError`` when nothing was
sent, ``ReadTimeoutError``, ``ProtocolError`` when the exchange broke), so :mod:`proxy.upstream` handles
them as it does for any urllib3 call; :class:`Response` has the part of urllib3's response API the proxy
uses (``status``, ``reason``, ``headers``, ``stream``, ``closed``, ``close``, ``release_conn``,
``drain_conn``).
"""

from __future__ import annotations

import functools
import http.client
import socket
import threading
import time
from collections.abc import Iterator

import urllib3
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.wait import wait_for_read

# What urllib3 sends when the client sent none; kept so a service sees the same requests as before.
DEFAULT_USER_AGENT = f"python-urllib3/{urllib3.__version__}"
# Instances come and go with discovery: a thread that has talked to more than this many starts afresh.
MAX_CONNECTIONS_PER_THREAD = 64
# How often a thread closes its idle connections the other end has closed (at its next call).
SWEEP_INTERVAL = 30.0

_local = threading.local()
_generation = 0  # bumped by close_all(): every thread drops the connections it kept before
opened = 0  # connections opened by this process (tests check that connections are reused)


@functools.cache
def _origin(base_url: str) -> tuple[str, str, int | None]:
    url = urllib3.util.parse_url(base_url)
    # urllib3 keeps an IPv6 literal's brackets ("[::1]"); http.client wants the bare address.
    return url.scheme or "http", (url.host or "").strip("[]"), url.port


def _idle() -> dict[str, http.client.HTTPConnection]:
    """This thread's idle connections by base URL."""
    table: dict[str, http.client.HTTPConnection] | None = getattr(_local, "table", None)
    if table is None or _local.generation != _generation or len(table) > MAX_CONNECTIONS_PER_THREAD:
        for connection in (table or {}).values():
            connection.close()
        table = _local.table = {}
        _local.generation = _generation
        _local.swept_at = time.monotonic()
    elif time.monotonic() - _local.swept_at > SWEEP_INTERVAL:
        _sweep(table)
    return table


def _sweep(table: dict[str, http.client.HTTPConnection]) -> None:
    """Close the idle connections the other end has closed: an instance that went away (discovery dropped
    it, so this thread will never ask for its URL again) or a service's keep-alive timeout. Without this,
    each would stay in CLOSE_WAIT, holding a descriptor, for the life of the thread."""
    _local.swept_at = time.monotonic()
    for base_url, connection in list(table.items()):
        if connection.sock is None or wait_for_read(connection.sock, timeout=0.0):
            connection.close()
            del table[base_url]


def close_all() -> None:
    """Every thread opens new connections from its next call on (tests, after the upstreams changed)."""
    global _generation
    _generation += 1


def _connect(base_url: str, timeout: float) -> http.client.HTTPConnection:
    global opened
    scheme, host, port = _origin(base_url)
    connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = connection_class(host, port, timeout=timeout)
    try:
        connection.connect()
    except TimeoutError as exc:
        connection.close()
        raise ConnectTimeoutError(f"Connection to {host} timed out. (connect timeout={timeout})") from exc
    except (OSError, ValueError) as exc:  # refused, unreachable, unknown name, bad timeout: nothing was sent
        connection.close()
        raise NewConnectionError(connection, f"Failed to establish a new connection: {exc}") from exc
    assert connection.sock is not None
    # Headers and a small body go out in separate writes: without this, Nagle's algorithm holds the second
    # one until the service's delayed ACK (40 ms on Linux).
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    opened += 1
    return connection


def request(
    base_url: str,
    method: str,
    target: str,
    *,
    headers: dict[str, str],
    body: bytes | None,
    connect_timeout: float,
    read_timeout: float,
) -> Response:
    """Send the request on this thread's connection to ``base_url`` (a new one if it has none or the
    service closed it) and return the response with its body unread."""
    connection = _idle().pop(base_url, None)
    # An idle keep-alive connection the service has closed reads as EOF: replaced before anything is sent
    # on it (urllib3 checks the same way).
    if connection is not None and (connection.sock is None or wait_for_read(connection.sock, timeout=0.0)):
        connection.close()
        connection = None
    if connection is None:
        connection = _connect(base_url, connect_timeout)
    assert connection.sock is not None
    if "User-Agent" not in headers:
        headers["User-Agent"] = DEFAULT_USER_AGENT
    try:
        connection.sock.settimeout(read_timeout)
        connection.request(method, target, body=body, headers=headers)
        raw = connection.getresponse()
    except TimeoutError as exc:
        connection.close()
        raise ReadTimeoutError(None, base_url + target, f"Read timed out. (read timeout={read_timeout})") from exc  # type: ignore[arg-type]
    except (OSError, http.client.HTTPException, ValueError) as exc:  # reset, closed mid-exchange, not HTTP
        connection.close()
        raise ProtocolError("Connection aborted.", exc) from exc
    return Response(raw, connection, base_url)


class Response:
    """A service's response, its body read as the client takes it."""

    def __init__(self, raw: http.client.HTTPResponse, connection: http.client.HTTPConnection, base_url: str) -> None:
        self._raw = raw
        self._connection: http.client.HTTPConnection | None = connection
        self._base_url = base_url
        self.status = raw.status
        self.reason = raw.reason
        self.headers = HTTPHeaderDict(raw.msg.items())

    @property
    def closed(self) -> bool:
        """Whether the body has been read to its end (or the response closed)."""
        return self._raw.isclosed()

    def stream(self, amt: int, decode_content: bool = False) -> Iterator[bytes]:
        """The body as the service sent it (never decoded), in chunks of at most ``amt`` bytes."""
        while True:
            try:
                chunk = self._raw.read(amt)
            except TimeoutError as exc:
                self._discard()
                raise ReadTimeoutError(None, self._base_url, "Read timed out.") from exc  # type: ignore[arg-type]
            except (OSError, ValueError, http.client.HTTPException) as exc:  # ValueError: a bad chunk size
                self._discard()
                raise ProtocolError("Connection broken while reading the body.", exc) from exc
            if not chunk:
                # http.client ends a sized read quietly when the connection closes early; a body shorter
                # than its Content-Length must not pass for a whole one (urllib3 enforces the same).
                if self._raw.length:
                    self._discard()
                    raise ProtocolError("Connection broken: the body ended early.", self._raw.length)
                return
            yield chunk

    def read(self, amt: int | None = None, decode_content: bool = False) -> bytes:
        """At most ``amt`` bytes of the body, decoded (gzip, deflate...) if asked, as urllib3 reads them:
        the gateway's own calls (docs, overview) read whole small documents this way."""
        reader = urllib3.HTTPResponse(
            body=self._raw,
            headers=self.headers,
            status=self.status,
            reason=self.reason,
            preload_content=False,
            decode_content=decode_content,
        )
        return reader.read(amt)

    def drain_conn(self) -> None:
        """Read and drop what is left of the body, so the connection can be used again."""
        try:
            for _ in self.stream(64 * 1024):
                pass
        except (ProtocolError, ReadTimeoutError):
            pass  # the connection is gone already

    def close(self) -> None:
        if not self._raw.isclosed():
            self._discard()  # a partly read body: the connection cannot carry another request
        self._raw.close()

    def release_conn(self) -> None:
        """Give the connection back to this thread once the body was read to its end; else close it."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._raw.isclosed() and not self._raw.will_close:
            _idle()[self._base_url] = connection
        else:
            connection.close()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
