"""Keep-alive connections to the services for :func:`proxy.upstream.send`, on the event loop of the request
that uses them: asyncio protocols whose responses are parsed by ``httptools`` (llhttp, the C parser of
Node.js, the one uvicorn uses) as the bytes arrive.

Why asyncio: the gateway's proxied path runs under gunicorn's ASGI worker, one event loop per worker process
serving all of that worker's requests at once. A blocking socket would stall every one of them while one
waits for its service, so a request goes out with ``transport.write`` and its task waits on a future that
the connection's protocol resolves from ``data_received``: no thread, no Task and no ``wait_for`` per read,
one future and one ``call_later`` timer (the read timeout) per wait. A request goes out in one write (its
head and a small body together), what arrives is fed straight to the parser, and the body is handed on as
the parser cuts it out (``bench/floors/asgi_floor.py`` measures what such a forwarder costs).

Why not urllib3's pool, which the health checks keep? A proxied request pays the client's own work on every
call, and urllib3 adds ≈ 120 µs of bookkeeping to ``http.client``'s (pool lookup and queue, retry and
timeout objects, its response wrapper), and both block. ``http.client``, which this module used first,
parsed every response head with the ``email`` package and read through buffered file objects
(PERFORMANCE.md, bench/README.md).

Connections belong to the loop that opened them (a transport is only ever driven by its own loop): idle
ones are kept per running loop and per base URL, last released first out, at most
:data:`MAX_IDLE_PER_ORIGIN` of them (one more is closed). A connection leaves its loop's pool while a
response uses it, so concurrent requests on one loop to one instance each get a connection of their own,
and goes back once that response was read to its end; a partly read one is closed, what is left would be
taken for the next response. The loop watches idle connections for free: one the service closes (its
keep-alive timeout, an instance that went away) or that receives bytes no request asked for leaves the pool
at once and is never handed out. A thread without a loop of its own (Django's views) calls through a loop
thread (proxy/upstream.py).

Flow control: the body is never buffered whole. Once more than :data:`PAUSE_ABOVE` bytes of it have arrived
and not been taken by the consumer, the transport stops reading (TCP then slows the service down); it reads
again once the consumer has brought that under :data:`RESUME_BELOW`.

HTTP/1.1 framing (RFC 9112), one fresh parser per response: a body framed by Content-Length, a chunked
body (handed on de-chunked, trailers dropped), or one delimited by the connection closing (read to EOF, and
the connection is then not reused); no body for HEAD (llhttp cannot be told the request method, so the head
is fed line by line and parsing stops at its end), 204 and 304; interim 1xx responses (``100 Continue``,
``103 Early Hints``) skipped; a response with ``Connection: close``, an HTTP/1.0 one without
``Connection: keep-alive``, one with both Content-Length and Transfer-Encoding (the latter wins) or one
followed by stray bytes is not reused. A response head (interim ones included) larger than
:data:`MAX_HEAD_BYTES` is refused. llhttp is strict where http.client was lenient; the two things
http.client passed on that it refuses get one leniency each, only for a head that needs it: an obsolete
folded header line (``lenient_headers``; the value reaches :mod:`proxy.headers` joined by its whitespace)
and Content-Length beside Transfer-Encoding (``lenient_chunked_length``). The service's reason phrase is
kept, as http.client kept it.

Failures raise urllib3's exception classes (``NewConnectionError``/``ConnectTimeoutError`` when nothing was
sent, ``ReadTimeoutError`` when one wait, for the head or for any part of the body, lasted longer than the
read timeout, ``ProtocolError`` when the exchange broke: a reset, EOF mid-head or mid-body, a body shorter
than its Content-Length, a response the parser refuses, a request that cannot be sent), so
:mod:`proxy.upstream` handles them as it does for any urllib3 call; :class:`Response` has the part of
urllib3's response API the proxy uses (``status``, ``reason``, ``headers``, ``closed``, ``close``,
``release_conn``; ``stream``, ``read`` and ``drain_conn`` are asynchronous).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import ssl
import weakref
from collections import deque
from collections.abc import AsyncIterator
from typing import NamedTuple, cast

import urllib3
from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.response import ContentDecoder, _get_decoder

# What urllib3 sends when the client sent none; kept so a service sees the same requests as before.
DEFAULT_USER_AGENT = f"python-urllib3/{urllib3.__version__}"
# Idle connections kept per instance per loop: enough for a burst's worth; more are closed on release.
MAX_IDLE_PER_ORIGIN = 32
# A response whose head (interim responses included) is not complete once this much has been received is
# refused: without a bound, a service sending headers forever would fill the worker's memory. nginx refuses
# a head over 4-8 KiB by default; http.client allowed 100 lines.
MAX_HEAD_BYTES = 64 * 1024
# A body up to this size goes out in the same write as the head (one syscall, one packet for most
# requests); a larger one is written on its own rather than copied.
MAX_JOINED_BODY = 64 * 1024
# Flow control: the transport stops reading once more body than this waits for the consumer...
PAUSE_ABOVE = 256 * 1024
# ... and reads again once the consumer has taken it down to this.
RESUME_BELOW = 64 * 1024

# As http.client: these methods carry a Content-Length, 0 without a body.
_METHODS_EXPECTING_BODY = frozenset({"PATCH", "POST", "PUT"})
# A request target must not break the request line: no whitespace, control character or non-ASCII byte
# (http.client refused the same).
_UNSENDABLE_TARGET = re.compile(r"[^\x21-\x7e]")
# As much as there is: a chunk size that never cuts what has arrived.
_ALL = 1 << 62

# Each loop's idle connections by base URL, the last released last. Weak: the entry of a loop that is gone
# goes with it once it keeps no connection (a connection refers to its loop); a closed loop's entry is
# dropped when another loop's pool is made and by close_all(), nothing can run its transports' callbacks.
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, list[_Connection]]]
_pools = weakref.WeakKeyDictionary()
_generation = 0  # bumped by close_all(): a connection opened before is never handed out again
opened = 0  # connections opened by this process (tests check that connections are reused)


class _Origin(NamedTuple):
    tls: bool
    host: str  # bare, without an IPv6 literal's brackets (what getaddrinfo wants)
    port: int
    host_line: str  # the Host header http.client sent: the port left out when it is the default one


@functools.cache
def _origin(base_url: str) -> _Origin:
    url = urllib3.util.parse_url(base_url)
    tls = url.scheme == "https"
    host = (url.host or "").strip("[]")  # urllib3 keeps an IPv6 literal's brackets ("[::1]")
    port = url.port or (443 if tls else 80)
    named = host if host.isascii() else host.encode("idna").decode("ascii")
    if ":" in named:
        named = f"[{named}]"
    if url.port is not None and url.port != (443 if tls else 80):
        named = f"{named}:{port}"
    return _Origin(tls, host, port, f"Host: {named}\r\n")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """What http.client's HTTPSConnection used: the system's CAs, hostname checked, ALPN http/1.1."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Connection(asyncio.Protocol):
    """One keep-alive connection to one instance, bound to the loop that opened it, carrying one exchange at
    a time: what arrives goes to the response using it (:meth:`Response._received`)."""

    __slots__ = ("base_url", "generation", "idle", "loop", "lost", "response", "transport")

    transport: asyncio.Transport

    def __init__(self, loop: asyncio.AbstractEventLoop, base_url: str) -> None:
        self.loop = loop
        self.base_url = base_url
        self.generation = _generation
        self.response: Response | None = None
        self.idle = False  # in its loop's pool
        self.lost = False  # closed, closing or closed by the service: never to carry another request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # A body larger than MAX_JOINED_BODY follows its head in a second write: without this, Nagle's
            # algorithm holds it until the service's delayed ACK (40 ms on Linux). asyncio sets it too.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is not None:
            response._received(data)
        else:
            self.close()  # bytes no request asked for: the connection is out of step with its requests

    def eof_received(self) -> bool | None:
        self._ended(None)
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    def _ended(self, exc: Exception | None) -> None:
        self.lost = True
        self._leave_pool()
        if self.response is not None:
            self.response._ended(exc)

    def close(self) -> None:
        """At once: a connection we close is idle or out of step, there is nothing to flush, and a TLS
        close_notify exchange would keep a socket open, reading an abandoned body, for up to 30 s."""
        self.lost = True
        self._leave_pool()
        self.response = None
        self.transport.abort()

    def _leave_pool(self) -> None:
        if not self.idle:
            return
        self.idle = False
        pool = _pools.get(self.loop)
        stack = None if pool is None else pool.get(self.base_url)
        if pool is not None and stack is not None and self in stack:
            stack.remove(self)
            if not stack:
                del pool[self.base_url]


def _take(loop: asyncio.AbstractEventLoop, base_url: str) -> _Connection | None:
    """The idle connection to ``base_url`` of ``loop`` released last, out of the pool; None if it has none."""
    pool = _pools.get(loop)
    if pool is None:
        return None
    stack = pool.get(base_url)
    while stack:
        connection = stack.pop()
        if not stack:
            del pool[base_url]
        connection.idle = False
        if connection.generation == _generation and not connection.lost:
            return connection
        connection.close()
    return None


def _put(connection: _Connection) -> None:
    """Back into its loop's pool, or closed when that already keeps MAX_IDLE_PER_ORIGIN to its instance."""
    if connection.lost or connection.generation != _generation:
        connection.close()
        return
    pool = _pools.get(connection.loop)
    if pool is None:
        pool = _new_pool(connection.loop)
    stack = pool.get(connection.base_url)
    if stack is None:
        pool[connection.base_url] = [connection]
    elif len(stack) < MAX_IDLE_PER_ORIGIN:
        stack.append(connection)
    else:
        connection.close()
        return
    connection.idle = True


def _new_pool(loop: asyncio.AbstractEventLoop) -> dict[str, list[_Connection]]:
    for closed in [other for other in _pools if other.is_closed()]:
        _pools.pop(closed, None)  # their transports cannot be closed any more: dropped, their sockets go with them
    pool: dict[str, list[_Connection]] = {}
    _pools[loop] = pool
    return pool


def _close_idle(pool: dict[str, list[_Connection]]) -> None:
    stacks = list(pool.values())
    pool.clear()
    for stack in stacks:
        for connection in stack:
            connection.idle = False
            connection.close()


def close_all() -> None:
    """Close every loop's idle connections, and the ones in use when they are released: every loop opens new
    connections from its next request on (tests, after the upstreams changed). A loop running on another
    thread closes its own, in a callback that runs before anything submitted to it afterwards."""
    global _generation
    _generation += 1
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, pool in list(_pools.items()):
        if loop.is_closed():
            _pools.pop(loop, None)
        elif loop is current or not loop.is_running():
            _close_idle(pool)
        else:
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(_close_idle, pool)


async def _connect(loop: asyncio.AbstractEventLoop, base_url: str, timeout: float) -> _Connection:
    global opened
    origin = _origin(base_url)
    try:
        async with asyncio.timeout(timeout):
            _, connection = await loop.create_connection(
                lambda: _Connection(loop, base_url),
                origin.host,
                origin.port,
                ssl=_tls_context() if origin.tls else None,
                server_hostname=origin.host if origin.tls else None,
            )
    except TimeoutError as exc:  # the timeout above (the TLS handshake included), or the kernel's
        raise ConnectTimeoutError(f"Connection to {origin.host} timed out. (connect timeout={timeout})") from exc
    except (OSError, ValueError) as exc:  # refused, unreachable, unknown name, TLS refused
        # urllib3 names its connection object first; the URL says more here.
        raise NewConnectionError(base_url, f"Failed to establish a new connection: {exc}") from exc  # type: ignore[arg-type]
    opened += 1
    return connection


def _request_head(base_url: str, method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
    """The request line and headers, with what http.client added when the caller had not: Host,
    ``Accept-Encoding: identity``, Content-Length, and urllib3's User-Agent."""
    if _UNSENDABLE_TARGET.search(target):
        raise ValueError(f"a request target that cannot be sent: {target!r}")
    names = {name.lower() for name in headers}
    lines = [f"{method} {target} HTTP/1.1\r\n"]
    if "host" not in names:
        lines.append(_origin(base_url).host_line)
    if "accept-encoding" not in names:
        lines.append("Accept-Encoding: identity\r\n")
    if "content-length" not in names and "transfer-encoding" not in names:
        if body is not None:
            lines.append(f"Content-Length: {len(body)}\r\n")
        elif method.upper() in _METHODS_EXPECTING_BODY:
            lines.append("Content-Length: 0\r\n")
    if "user-agent" not in names:
        lines.append(f"User-Agent: {DEFAULT_USER_AGENT}\r\n")
    lines.extend([f"{name}: {value}\r\n" for name, value in headers.items()])
    lines.append("\r\n")
    head = "".join(lines)
    # One line break per line, or a name or value carried a CR or LF that would smuggle in a header or a
    # second request: counted once over the whole head, cheaper than a check per header.
    if head.count("\n") != len(lines) or head.count("\r") != len(lines):
        raise ValueError("a header name or value with a line break")
    return head.encode("latin-1")  # as http.client: a value that is not Latin-1 cannot be sent


async def request(
    base_url: str,
    method: str,
    target: str,
    *,
    headers: dict[str, str],
    body: bytes | None,
    connect_timeout: float,
    read_timeout: float,
) -> Response:
    """Send the request on an idle connection of the running loop to ``base_url`` (a new one if it has
    none) and return the response once its head has arrived, its body unread."""
    try:
        head = _request_head(base_url, method, target, headers, body)
    except ValueError as exc:  # nothing a service could be sent: as http.client, the exchange failed
        raise ProtocolError("Connection aborted.", exc) from exc
    loop = asyncio.get_running_loop()
    connection = _take(loop, base_url) or await _connect(loop, base_url, connect_timeout)
    response = Response(connection, base_url, read_timeout, head_only=method.upper() == "HEAD")
    try:
        if connection.lost:  # a new connection the service closed (or sent bytes on) before the request
            raise ProtocolError("Connection aborted.", ConnectionError("closed before the request was sent"))
        if body and len(body) > MAX_JOINED_BODY:
            connection.transport.write(head)
            connection.transport.write(body)
        else:
            connection.transport.write(head + body if body else head)
        while not response._head_done:
            if response._failure is not None:
                raise response._failure
            if not await response._wait():
                raise ReadTimeoutError(None, base_url + target, f"Read timed out. (read timeout={read_timeout})")  # type: ignore[arg-type]
    except OSError as exc:  # a transport refusing the write
        response._discard()
        raise ProtocolError("Connection aborted.", exc) from exc
    except BaseException:  # the errors above, and a cancelled request: the connection is out of step
        response._discard()
        raise
    return response


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Response:
    """A service's response, its body read as the consumer takes it.

    It is also the parser's protocol: llhttp calls the ``on_*`` methods as it finds each part, from the
    connection's ``data_received``; the consumer waits on :attr:`_waiter` until something it needs has
    arrived."""

    __slots__ = (
        "_at",
        "_base_url",
        "_body",
        "_closed",
        "_complete",
        "_connection",
        "_cut",
        "_decoding",
        "_failure",
        "_fields",
        "_head_done",
        "_head_only",
        "_keep_alive",
        "_loop",
        "_parser",
        "_paused",
        "_queue",
        "_read_timeout",
        "_reason",
        "_received_head",
        "_received_size",
        "_unread",
        "_waiter",
        "headers",
        "reason",
        "status",
    )

    status: int
    reason: str
    headers: HTTPHeaderDict

    def __init__(self, connection: _Connection, base_url: str, read_timeout: float, *, head_only: bool) -> None:
        self._connection: _Connection | None = connection
        self._loop = connection.loop
        self._base_url = base_url
        self._read_timeout = read_timeout
        self._head_only = head_only
        self.status = 0
        self.reason = ""
        self.headers = HTTPHeaderDict()
        self._parser: HttpResponseParser | None = HttpResponseParser(self)
        self._fields: list[tuple[bytes, bytes]] = []  # the head being parsed (an interim one is dropped)
        self._reason = b""
        self._received_head: list[bytes] = []  # what arrived until the head's end, for a lenient re-parse
        self._received_size = 0
        self._head_done = False  # the final response's head has been parsed
        self._complete = False  # ... and its body has all been received
        self._keep_alive = False  # the connection may carry another request once the body is handed out
        self._cut: list[bytes] = []  # body bytes the parser cut out of what arrived last
        self._queue: deque[bytes] = deque()  # body bytes that arrived, one item per data_received
        self._body = b""  # the item being handed out, from self._at on
        self._at = 0
        self._unread = 0  # bytes of the body that arrived and were not handed out
        self._paused = False  # the transport stopped reading (flow control)
        self._waiter: asyncio.Future[bool] | None = None  # the consumer's wait: True something came, False timed out
        self._failure: ProtocolError | None = None  # a broken exchange, raised once what came before is out
        self._closed = False
        self._decoding: _Decoding | None = None
        connection.response = self

    # The parser's callbacks.

    def on_message_begin(self) -> None:
        if self._head_done:
            # A second response after ours, which was never asked for: this stops the parser, and the
            # connection, out of step with its requests, is not used again.
            raise _StrayBytes
        self._fields.clear()
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:  # afterwards: the trailers of a chunked body, dropped as http.client did
            self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status < 100:
            raise ValueError(f"status {status}")  # llhttp takes 3 digits from 000 on; http.client refused these
        if status < 200:
            return  # interim (100 Continue, 103 Early Hints): the final response follows on the connection
        self.status = status
        self.reason = self._reason.decode("latin-1")  # the service's own phrase, as http.client kept it
        headers = self.headers
        for name, value in self._fields:  # Latin-1, as http.client decoded a head
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        self._head_done = True
        if self._head_only:
            # No body follows a HEAD response whatever its Content-Length says; llhttp cannot know that, so
            # nothing after this head is fed to it (:meth:`_feed`).
            self._complete = True
            self._keep_alive = self._reusable()

    def on_body(self, body: bytes) -> None:
        self._cut.append(body)

    def on_message_complete(self) -> None:
        if self._head_done and not self._complete:
            self._complete = True
            self._keep_alive = self._reusable()

    def _reusable(self) -> bool:
        """llhttp says no after Connection: close, for an HTTP/1.0 response without keep-alive and for a body
        delimited by the connection closing (also for a HEAD response with neither Content-Length nor
        Transfer-Encoding: a connection lost, never a body misread). Transfer-Encoding beside a
        Content-Length is what a smuggling attempt looks like (RFC 9112 6.3): the body is passed on
        de-chunked, the connection dropped."""
        assert self._parser is not None
        return self._parser.should_keep_alive() and not (
            "content-length" in self.headers and "transfer-encoding" in self.headers
        )

    # What the connection receives (its protocol callbacks call these).

    def _received(self, data: bytes) -> None:
        if self._complete:
            # Stray bytes after the response (a second response, data after Connection: close): what was
            # received is whole, the connection is not.
            self._keep_alive = False
            return
        head_was_done = self._head_done
        rest = b""
        if not head_was_done:
            # The head must end within MAX_HEAD_BYTES: what arrives past them (one read can bring 256 KiB)
            # is parsed only once it has.
            room = MAX_HEAD_BYTES - self._received_size
            if len(data) > room:
                data, rest = data[:room], data[room:]
            self._received_head.append(data)
            self._received_size += len(data)
        self._parse(data)
        if not head_was_done:
            if self._head_done:
                self._received_head.clear()
                if rest and self._failure is None:
                    self._parse(rest)
            elif rest and self._failure is None:
                self._fail(ProtocolError("Connection aborted.", ValueError("response head too large")))
        cut = self._cut
        if cut:
            piece = cut[0] if len(cut) == 1 else b"".join(cut)
            cut.clear()
            self._queue.append(piece)
            self._unread += len(piece)
            if self._unread > PAUSE_ABOVE and not self._paused and self._connection is not None:
                self._paused = True
                self._connection.transport.pause_reading()
        if self._waiter is not None and (
            self._failure is not None or (self._head_done and (not head_was_done or self._queue or self._complete))
        ):
            self._wake()

    def _parse(self, data: bytes) -> None:
        try:
            self._feed(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            if self._head_done:  # in the body: raised when the body is read, as any broken body
                self._fail(ProtocolError("Connection broken: an invalid body.", exc))
            else:
                self._parse_leniently(b"".join(self._received_head), exc)

    def _ended(self, exc: Exception | None) -> None:
        """The service closed the connection (``exc`` None) or it broke: the end of a body delimited by the
        connection closing, else a broken exchange."""
        self._keep_alive = False
        if self._complete or self._failure is not None:
            pass
        elif not self._head_done:
            self._failure = ProtocolError(
                "Connection aborted.", exc or ConnectionError("closed before a whole response head")
            )
        elif exc is not None:
            self._failure = ProtocolError("Connection broken while reading the body.", exc)
        elif self._delimited_by_close():
            self._complete = True
        else:
            # A body shorter than its Content-Length, or a chunked one without its last chunk, must not pass
            # for a whole one (urllib3 enforces the same).
            self._failure = ProtocolError("Connection broken: the body ended early.")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _fail(self, failure: ProtocolError) -> None:
        """Raised once what came before is handed out; nothing more is read from the connection."""
        if self._failure is None:
            self._failure = failure
        self._keep_alive = False
        if self._connection is not None:
            self._connection.close()

    def _parse_leniently(self, received: bytes, refused: Exception) -> None:
        """Parse what was received again, with the one llhttp leniency that accepts what http.client
        passed on and llhttp refused, only for a head that needs it:

        - ``lenient_headers`` for an obsolete line folding (RFC 9112 5.2 asks a proxy to replace it by
          spaces). It also lets invalid characters through in header values, hence only for a head that
          folds; proxy/headers.py drops a value that would still break a header block, Django the rest.
        - ``lenient_chunked_length`` for Transfer-Encoding beside a Content-Length: the former wins (RFC
          9112 6.3), proxy/headers.py drops the latter, and the connection is not reused (:meth:`_reusable`).
        """
        lowered = received.lower()
        leniencies = {
            "lenient_headers": b"\n " in received or b"\n\t" in received,
            "lenient_chunked_length": b"\ncontent-length:" in lowered and b"\ntransfer-encoding:" in lowered,
        }
        if not any(leniencies.values()):
            self._fail(ProtocolError("Connection aborted.", refused))
            return
        self._parser = HttpResponseParser(self)
        self._parser.set_dangerous_leniencies(**{name: True for name, needed in leniencies.items() if needed})
        self._fields.clear()
        self._cut.clear()
        try:
            self._feed(received)
        except (HttpParserError, HttpParserUpgrade) as exc:
            if self._head_done:
                self._fail(ProtocolError("Connection broken: an invalid body.", exc))
            else:
                self._fail(ProtocolError("Connection aborted.", exc))

    def _feed(self, data: bytes) -> None:
        """Hand received bytes to the parser; bytes after the response mean the connection is not reused."""
        parser = self._parser
        assert parser is not None
        try:
            if not self._head_only:
                parser.feed_data(data)
                return
            # A line at a time, so parsing stops right where the final head ends (see on_headers_complete).
            start = 0
            while start < len(data) and not self._head_done:
                end = data.find(b"\n", start) + 1 or len(data)
                parser.feed_data(data[start:end])
                start = end
            if start < len(data):
                self._keep_alive = False
        except HttpParserError:
            if not self._complete:
                raise
            self._keep_alive = False  # stray bytes after the response (see _received)

    def _delimited_by_close(self) -> bool:
        """Whether the body ends when the connection closes (RFC 9112 6.3): neither chunked (Transfer-Encoding
        whose last coding is chunked) nor sized by a Content-Length."""
        coding = self.headers.get("Transfer-Encoding")
        if coding is not None:
            return not coding.rstrip(" \t").lower().endswith("chunked")
        return "Content-Length" not in self.headers

    # Reading.

    async def _wait(self) -> bool:
        """Wait until something arrives for the consumer or the connection ends: False if the read timeout
        passed first. One future, one timer."""
        if self._paused:
            self._resume()
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._read_timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _chunk(self, amt: int) -> bytes:
        """At most ``amt`` bytes of the body that arrived and were not handed out yet; b"" if there are none."""
        body, at = self._body, self._at
        if at >= len(body):
            if not self._queue:
                return b""
            body = self._body = self._queue.popleft()
            at = 0
        chunk = body[at : at + amt]  # all of it, the common case, is the same object: no copy
        self._at = at + len(chunk)
        self._unread -= len(chunk)
        if self._paused and self._unread <= RESUME_BELOW:
            self._resume()
        return chunk

    async def _more(self) -> bool:
        """Wait until more of the body has arrived: False at its end; raises if it broke or stalled."""
        if self._closed:
            return False
        if self._failure is not None:
            self._discard()
            raise self._failure
        if self._complete:
            self._parser = None  # the parser and this response refer to each other: let go at once
            return False
        if self._connection is None:
            raise ProtocolError("Connection broken: the response was released before its end.")
        if not await self._wait():
            self._discard()
            raise ReadTimeoutError(None, self._base_url, f"Read timed out. (read timeout={self._read_timeout})")  # type: ignore[arg-type]
        return True

    def _resume(self) -> None:
        self._paused = False
        if self._connection is not None and not self._connection.lost:
            self._connection.transport.resume_reading()

    @property
    def closed(self) -> bool:
        """Whether the body has been read to its end (or the response closed)."""
        return self._closed or self._read_to_end()

    def _read_to_end(self) -> bool:
        return self._complete and self._failure is None and self._at >= len(self._body) and not self._queue

    async def stream(self, amt: int) -> AsyncIterator[bytes]:
        """The body as the service sent it (never decoded, de-chunked), in chunks of at most ``amt`` bytes,
        each as soon as it has arrived; none empty."""
        while True:
            chunk = self._chunk(amt)
            if chunk:
                yield chunk
            elif not await self._more():
                return

    async def read(self, amt: int | None = None, decode_content: bool = False) -> bytes:
        """At most ``amt`` bytes of the body (all of it without), fewer only at its end. ``decode_content``
        decodes its Content-Encoding (gzip, deflate...) as urllib3's read did (the gateway asks for
        ``identity``; a service may not listen), ``amt`` then counting decoded bytes."""
        if amt is not None and amt < 0:
            amt = None
        if decode_content:
            if self._decoding is None:
                self._decoding = _Decoding(self.headers)
            if self._decoding.decoder is not None or self._decoding.decoded:
                return await self._decoding.read(self, amt)
        parts: list[bytes] = []
        wanted = _ALL if amt is None else amt
        while wanted > 0:
            chunk = self._chunk(wanted)
            if chunk:
                parts.append(chunk)
                wanted -= len(chunk)
            elif not await self._more():
                break
        return b"".join(parts)

    async def drain_conn(self) -> None:
        """Read and drop what is left of the body, so the connection can be used again."""
        try:
            while self._chunk(_ALL) or await self._more():
                pass
        except (ProtocolError, ReadTimeoutError):
            pass  # the connection is gone already

    def close(self) -> None:
        """Close the connection unless the body was read to its end: what is left would be taken for the
        next response."""
        if not self._read_to_end():
            self._discard()
        self._closed = True

    def release_conn(self) -> None:
        """Give the connection back to its loop's pool once the body was read to its end; else close it."""
        connection, self._connection = self._connection, None
        self._parser = None
        if connection is None:
            return
        connection.response = None
        if self._keep_alive and self._read_to_end():
            if self._paused:
                self._paused = False
                connection.transport.resume_reading()
            _put(connection)
        else:
            connection.close()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        self._parser = None
        self._keep_alive = False
        self._queue.clear()
        self._body, self._at, self._unread = b"", 0, 0
        if connection is not None:
            connection.close()


class _StrayBytes(Exception):
    """Raised in a parser callback to stop it at bytes that belong to no response of ours."""


class _Decoding:
    """A body's Content-Encoding undone as urllib3 does (its decoders, each call bounded by what is asked
    for, so a small compressed body cannot fill the memory), for :meth:`Response.read`."""

    __slots__ = ("decoded", "decoder")

    def __init__(self, headers: HTTPHeaderDict) -> None:
        coding = headers.get("Content-Encoding", "").lower()
        known = urllib3.HTTPResponse.CONTENT_DECODERS
        self.decoder: ContentDecoder | None = None  # None: nothing to decode, or the body has ended
        if coding in known or ("," in coding and any(part.strip() in known for part in coding.split(","))):
            self.decoder = _get_decoder(coding)
        self.decoded = b""  # decoded and not handed out yet

    async def read(self, response: Response, amt: int | None) -> bytes:
        decoded = bytearray(self.decoded)
        try:
            while (decoder := self.decoder) is not None and (amt is None or len(decoded) < amt):
                room = -1 if amt is None else amt - len(decoded)
                if decoder.has_unconsumed_tail:
                    decoded += decoder.decompress(b"", max_length=room)
                elif raw := response._chunk(_ALL):
                    decoded += decoder.decompress(raw, max_length=room)
                elif not await response._more():
                    decoded += decoder.decompress(b"") + decoder.flush()
                    self.decoder = None
        except urllib3.HTTPResponse.DECODER_ERROR_CLASSES as exc:
            raise DecodeError(f"Received a body that does not decode as its Content-Encoding: {exc}", exc) from exc
        cut = len(decoded) if amt is None else amt
        self.decoded = bytes(decoded[cut:])
        return bytes(decoded[:cut])
