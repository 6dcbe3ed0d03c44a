"""Keep-alive connections to the services for :func:`proxy.upstream.send`: one per instance per thread, a
plain blocking socket whose responses are parsed by ``httptools`` (llhttp, the C parser of Node.js, the one
uvicorn uses).

Why not urllib3's pool, which the health checks keep? A proxied request pays the client's own work on
every call, and urllib3 adds ≈ 120 µs of bookkeeping to ``http.client``'s (pool lookup and queue, retry
and timeout objects, its response wrapper): measured ≈ 390-460 µs against ≈ 280 µs per call
(PERFORMANCE.md, bench/README.md). And why not ``http.client`` itself, which this module used before? It
parses every response head with the ``email`` package and reads through buffered file objects wrapped
around the socket: a trivial proxy under gunicorn gthread (2 workers x 8 threads, 16 connections) spent
≈ 735 µs of CPU per request with it, against ≈ 503 µs with a blocking socket and llhttp. Here a request
goes out in one ``sendall`` (its head and a small body together), the response is read with ``recv``
straight into the parser, and the body is handed on as the parser cuts it out.

gunicorn's gthread worker serves a request on one thread from the first byte to the last, the body's
streaming included, so a connection kept per thread is never shared: no pool and no lock are needed (the
overview's calls run on a long-lived executor's threads, each with its own connections). A connection is
taken out of its thread's table while a response uses it and put back once that response was read to its
end (a partly read one is closed: what is left would be taken for the next response).

HTTP/1.1 framing (RFC 9112), one fresh parser per response: a body framed by Content-Length, a chunked
body (handed on de-chunked, trailers dropped), or one delimited by the connection closing (read to EOF, and
the connection is then not reused); no body for HEAD (llhttp cannot be told the request method, so the head
is fed line by line and parsing stops at its end), 204 and 304; interim 1xx responses (``100 Continue``,
``103 Early Hints``) skipped; a response with ``Connection: close``, an HTTP/1.0 one without
``Connection: keep-alive``, one with both Content-Length and Transfer-Encoding (the latter wins) or one
followed by stray bytes is not reused. llhttp is strict where http.client was lenient; the two things
http.client passed on that it refuses get one leniency each, only for a head that needs it: an obsolete
folded header line (``lenient_headers``; the value reaches :mod:`proxy.headers` joined by its whitespace)
and Content-Length beside Transfer-Encoding (``lenient_chunked_length``). The service's reason phrase is
kept, as http.client kept it.

Failures raise urllib3's exception classes (``NewConnectionError``/``ConnectTimeoutError`` when nothing was
sent, ``ReadTimeoutError``, ``ProtocolError`` when the exchange broke: a reset, EOF mid-head or mid-body, a
body shorter than its Content-Length, a response the parser refuses), so :mod:`proxy.upstream` handles them
as it does for any urllib3 call; :class:`Response` has the part of urllib3's response API the proxy uses
(``status``, ``reason``, ``headers``, ``stream``, ``read``, ``closed``, ``close``, ``release_conn``,
``drain_conn``).
"""

from __future__ import annotations

import functools
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

import urllib3
from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from urllib3 import HTTPHeaderDict
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util.wait import wait_for_read

# What urllib3 sends when the client sent none; kept so a service sees the same requests as before.
DEFAULT_USER_AGENT = f"python-urllib3/{urllib3.__version__}"
# Instances come and go with discovery: a thread that has talked to more than this many starts afresh.
MAX_CONNECTIONS_PER_THREAD = 64
# How often a thread closes its idle connections the other end has closed (at its next call).
SWEEP_INTERVAL = 30.0
# One recv per call: a whole small response at once, and what a large body's chunks are cut from.
RECV_SIZE = 64 * 1024
# A response whose head (interim responses included) is not complete once this much has been received is
# refused: without a bound, a service sending headers forever would fill the worker's memory. nginx refuses
# a head over 4-8 KiB by default; http.client allowed 100 lines.
MAX_HEAD_BYTES = 64 * 1024
# A body up to this size goes out in the same write as the head (one syscall, one packet for most
# requests); a larger one is sent on its own rather than copied.
MAX_JOINED_BODY = 64 * 1024

# As http.client: these methods carry a Content-Length, 0 without a body.
_METHODS_EXPECTING_BODY = frozenset({"PATCH", "POST", "PUT"})
# A request target must not break the request line: no whitespace, control character or non-ASCII byte
# (http.client refused the same).
_UNSENDABLE_TARGET = re.compile(r"[^\x21-\x7e]")

_local = threading.local()
_generation = 0  # bumped by close_all(): every thread drops the connections it kept before
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


def _idle() -> dict[str, socket.socket]:
    """This thread's idle connections by base URL."""
    table: dict[str, socket.socket] | None = getattr(_local, "table", None)
    if table is None or _local.generation != _generation or len(table) > MAX_CONNECTIONS_PER_THREAD:
        for connection in (table or {}).values():
            connection.close()
        table = _local.table = {}
        _local.generation = _generation
        _local.swept_at = time.monotonic()
    elif time.monotonic() - _local.swept_at > SWEEP_INTERVAL:
        _sweep(table)
    return table


def _sweep(table: dict[str, socket.socket]) -> None:
    """Close the idle connections the other end has closed: an instance that went away (discovery dropped
    it, so this thread will never ask for its URL again) or a service's keep-alive timeout. Without this,
    each would stay in CLOSE_WAIT, holding a descriptor, for the life of the thread."""
    _local.swept_at = time.monotonic()
    for base_url, connection in list(table.items()):
        if wait_for_read(connection, timeout=0.0):
            connection.close()
            del table[base_url]


def close_all() -> None:
    """Every thread opens new connections from its next call on (tests, after the upstreams changed)."""
    global _generation
    _generation += 1


def _connect(base_url: str, timeout: float) -> socket.socket:
    global opened
    origin = _origin(base_url)
    connection: socket.socket | None = None
    try:
        connection = socket.create_connection((origin.host, origin.port), timeout)
        # A body larger than MAX_JOINED_BODY follows its head in a second write: without this, Nagle's
        # algorithm holds it until the service's delayed ACK (40 ms on Linux).
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if origin.tls:
            connection = _tls_context().wrap_socket(connection, server_hostname=origin.host)
    except TimeoutError as exc:
        if connection is not None:
            connection.close()
        raise ConnectTimeoutError(f"Connection to {origin.host} timed out. (connect timeout={timeout})") from exc
    except (OSError, ValueError) as exc:  # refused, unreachable, unknown name, bad timeout, TLS refused
        if connection is not None:
            connection.close()
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
    try:
        head = _request_head(base_url, method, target, headers, body)
    except ValueError as exc:  # nothing a service could be sent: as http.client, the exchange failed
        raise ProtocolError("Connection aborted.", exc) from exc
    connection = _idle().pop(base_url, None)
    # An idle keep-alive connection the service has closed reads as EOF: replaced before anything is sent
    # on it (urllib3 checks the same way).
    if connection is not None and wait_for_read(connection, timeout=0.0):
        connection.close()
        connection = None
    if connection is None:
        connection = _connect(base_url, connect_timeout)
    response = Response(connection, base_url, head_only=method.upper() == "HEAD")
    try:
        connection.settimeout(read_timeout)
        if body and len(body) > MAX_JOINED_BODY:
            connection.sendall(head)
            connection.sendall(body)
        else:
            connection.sendall(head + body if body else head)
        response._read_head()
    except TimeoutError as exc:
        response._discard()
        raise ReadTimeoutError(None, base_url + target, f"Read timed out. (read timeout={read_timeout})") from exc  # type: ignore[arg-type]
    except OSError as exc:  # reset, or closed before the response
        response._discard()
        raise ProtocolError("Connection aborted.", exc) from exc
    except ProtocolError:
        response._discard()
        raise
    return response


class Response:
    """A service's response, its body read as the client takes it.

    It is also the parser's protocol: llhttp calls the ``on_*`` methods as it finds each part."""

    status: int
    headers: HTTPHeaderDict

    def __init__(self, connection: socket.socket, base_url: str, *, head_only: bool) -> None:
        self._connection: socket.socket | None = connection
        self._base_url = base_url
        self._head_only = head_only
        self.status = 0
        self.reason = ""
        self.headers = HTTPHeaderDict()
        self._parser: HttpResponseParser | None = HttpResponseParser(self)
        self._fields: list[tuple[bytes, bytes]] = []  # the head being parsed (an interim one is dropped)
        self._reason = b""
        self._head_done = False  # the final response's head has been parsed
        self._complete = False  # ... and its body has all been received
        self._keep_alive = False  # the connection may carry another request once the body is handed out
        self._pieces: list[bytes] = []  # body bytes the parser has cut out since the last read
        self._body = b""  # body bytes being handed out, from self._at on
        self._at = 0
        self._failure: ProtocolError | None = None  # a broken body, raised once what came before is out
        self._closed = False

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
        self._pieces.append(body)

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

    # Reading.

    def _read_head(self) -> None:
        """Receive until the final response's head has been parsed (what follows of the body is kept)."""
        connection = self._connection
        assert connection is not None
        received: list[bytes] = []
        size = 0
        while not self._head_done:
            data = connection.recv(RECV_SIZE)
            if not data:
                raise ProtocolError("Connection aborted.", ConnectionError("closed before a whole response head"))
            received.append(data)
            size += len(data)
            try:
                self._feed(data)
            except (HttpParserError, HttpParserUpgrade) as exc:
                if self._head_done:  # in the body: raised when the body is read, as any broken body
                    self._failure = ProtocolError("Connection broken: an invalid body.", exc)
                    break
                self._parse_leniently(b"".join(received), exc)
            if size > MAX_HEAD_BYTES and not self._head_done:
                raise ProtocolError("Connection aborted.", ValueError("response head too large"))

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
            raise ProtocolError("Connection aborted.", refused) from refused
        self._parser = HttpResponseParser(self)
        self._parser.set_dangerous_leniencies(**{name: True for name, needed in leniencies.items() if needed})
        self._fields.clear()
        self._pieces.clear()
        try:
            self._feed(received)
        except (HttpParserError, HttpParserUpgrade) as exc:
            if not self._head_done:
                raise ProtocolError("Connection aborted.", exc) from exc
            self._failure = ProtocolError("Connection broken: an invalid body.", exc)

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
            # Stray bytes after the response (a second response, data after Connection: close): what was
            # received is whole, the connection is not.
            self._keep_alive = False

    def _receive(self) -> None:
        """One more recv of the body into the parser; EOF ends a body delimited by the connection closing."""
        connection = self._connection
        if connection is None:
            raise ProtocolError("Connection broken: the response was released before its end.")
        try:
            data = connection.recv(RECV_SIZE)
        except TimeoutError as exc:
            self._discard()
            raise ReadTimeoutError(None, self._base_url, "Read timed out.") from exc  # type: ignore[arg-type]
        except OSError as exc:
            self._discard()
            raise ProtocolError("Connection broken while reading the body.", exc) from exc
        if not data:
            if self._delimited_by_close():
                self._complete = True
                self._keep_alive = False
                return
            self._discard()
            # A body shorter than its Content-Length, or a chunked one without its last chunk, must not pass
            # for a whole one (urllib3 enforces the same).
            raise ProtocolError("Connection broken: the body ended early.")
        try:
            self._feed(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            self._failure = ProtocolError("Connection broken: an invalid body.", exc)

    def _delimited_by_close(self) -> bool:
        """Whether the body ends when the connection closes (RFC 9112 6.3): neither chunked (Transfer-Encoding
        whose last coding is chunked) nor sized by a Content-Length."""
        coding = self.headers.get("Transfer-Encoding")
        if coding is not None:
            return not coding.rstrip(" \t").lower().endswith("chunked")
        return "Content-Length" not in self.headers

    def _read_some(self, amt: int) -> bytes:
        """At most ``amt`` bytes of the body, as soon as any are there; b"" at its end."""
        if self._closed:
            return b""
        while self._at >= len(self._body):
            if self._pieces:
                pieces = self._pieces
                self._body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                self._at = 0
                pieces.clear()
                break
            if self._failure is not None:
                self._discard()
                raise self._failure
            if self._complete:
                self._parser = None  # the parser and this response refer to each other: let go at once
                return b""
            self._receive()
        at = self._at
        chunk = self._body[at : at + amt]  # all of it, the common case, is the same object: no copy
        self._at = at + len(chunk)
        return chunk

    @property
    def closed(self) -> bool:
        """Whether the body has been read to its end (or the response closed)."""
        return self._closed or self._read_to_end()

    def _read_to_end(self) -> bool:
        return self._complete and self._failure is None and self._at >= len(self._body) and not self._pieces

    def stream(self, amt: int, decode_content: bool = False) -> Iterator[bytes]:
        """The body as the service sent it (never decoded, de-chunked), in chunks of at most ``amt`` bytes."""
        while chunk := self._read_some(amt):
            yield chunk

    def read(self, amt: int | None = None, decode_content: bool = False) -> bytes:
        """At most ``amt`` bytes of the body, decoded (gzip, deflate...) if asked, as urllib3 reads them:
        the gateway's own calls (docs, overview) read whole small documents this way."""
        reader = urllib3.HTTPResponse(
            body=_BodyFile(self),  # type: ignore[arg-type]  # a file to urllib3, which calls read and close
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
            for _ in self.stream(RECV_SIZE):
                pass
        except (ProtocolError, ReadTimeoutError):
            pass  # the connection is gone already

    def close(self) -> None:
        if not self._read_to_end():
            self._discard()  # a partly read body: the connection cannot carry another request
        self._closed = True

    def release_conn(self) -> None:
        """Give the connection back to this thread once the body was read to its end; else close it."""
        connection, self._connection = self._connection, None
        self._parser = None
        if connection is None:
            return
        if self._keep_alive and self._read_to_end():
            table = _idle()
            displaced = table.get(self._base_url)
            table[self._base_url] = connection
            if displaced is not None:  # two responses from one instance open at once on this thread
                displaced.close()
        else:
            connection.close()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        self._parser = None
        self._keep_alive = False
        if connection is not None:
            connection.close()


class _StrayBytes(Exception):
    """Raised in a parser callback to stop it at bytes that belong to no response of ours."""


class _BodyFile:
    """The body as the file urllib3's response reads from (and decodes): ``read`` fills ``amt`` bytes, as
    a buffered file does, unless the body ends first."""

    def __init__(self, response: Response) -> None:
        self._response = response

    @property
    def closed(self) -> bool:
        return self._response.closed

    def read(self, amt: int | None = None) -> bytes:
        parts: list[bytes] = []
        wanted = RECV_SIZE if amt is None else amt
        while wanted > 0 and (chunk := self._response._read_some(min(wanted, RECV_SIZE))):
            parts.append(chunk)
            if amt is not None:
                wanted -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        self._response.close()
