"""The proxy's keep-alive connections to the services (proxy/connections.py), against raw loopback servers
that misbehave in the ways a real service or network can.

The client is asyncio: each test is a coroutine run on a fresh event loop by :func:`in_loop` (no plugin),
which closes the loop's idle connections before the loop ends; the servers are blocking sockets on threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import gzip
import ipaddress
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, ParamSpec

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError, ReadTimeoutError

from common.testing import unanswered_port
from proxy import connections
from proxy.tests.utils import RawServer, closed_port_url, read_request

P = ParamSpec("P")


def in_loop(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an ``async def`` test on a fresh event loop (``asyncio.run``); pytest's fixtures and parameters
    reach it through the wrapper's signature. The loop's idle connections are closed before it ends."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        async def main() -> None:
            try:
                await test(*args, **kwargs)
            finally:
                connections.close_all()

        asyncio.run(main())

    return run


def answer(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(serve: Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(serve))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


RawServerFactory = Callable[[Callable[[socket.socket], None]], RawServer]


async def call(
    url: str, method: str = "GET", body: bytes | None = None, *, read_timeout: float = 2
) -> connections.Response:
    return await connections.request(
        url,
        method,
        "/x",
        headers={"Content-Length": str(len(body or b""))},
        body=body,
        connect_timeout=1,
        read_timeout=read_timeout,
    )


def answering_in_writes(*writes: bytes, pause: float = 0.0) -> Callable[[socket.socket], None]:
    """A service's ``serve``: every request on the connection answered by the same writes, one ``sendall``
    each (so the answer arrives in pieces), the connection kept until the client closes it."""

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # OSError: the client refused the answer and reset the connection
        with conn, contextlib.suppress(OSError):
            while read_request(conn):
                for write in writes:
                    conn.sendall(write)
                    time.sleep(pause)

    return serve


async def read_all(response: connections.Response) -> bytes:
    content = b"".join([chunk async for chunk in response.stream(1024)])
    response.release_conn()
    return content


def idle(url: str) -> int:
    """How many idle connections to ``url`` the running loop keeps."""
    return len(connections._pools.get(asyncio.get_running_loop(), {}).get(url, []))


@in_loop
async def test_an_idle_connection_the_service_closed_is_replaced_before_anything_is_sent_on_it(
    raw_server: RawServerFactory,
) -> None:
    closed = threading.Event()

    def serve_one_then_close(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(answer(b"one"))  # keep-alive, then gone: as a service's idle timeout does
        closed.set()

    server = raw_server(serve_one_then_close)
    assert await read_all(await call(server.url)) == b"one"
    await asyncio.to_thread(closed.wait, 2)

    # a POST is never retried: it only succeeds if the dead connection was noticed before sending
    assert await read_all(await call(server.url, "POST", b"{}")) == b"one"
    assert server.accepted == 2


@in_loop
async def test_a_partly_read_body_closes_its_connection_and_a_whole_one_keeps_it(
    raw_server: RawServerFactory,
) -> None:
    server = raw_server(answering_in_writes(answer(b"x" * 5000)))
    assert len(await read_all(await call(server.url))) == 5000
    assert len(await read_all(await call(server.url))) == 5000
    assert server.accepted == 1  # read to the end: the connection was used again

    partly = await call(server.url)
    async with contextlib.aclosing(partly.stream(1000)) as chunks:
        await anext(chunks)
    partly.close()  # the client went away mid-body
    partly.release_conn()
    assert len(await read_all(await call(server.url))) == 5000
    assert server.accepted == 2  # what was left unread must not be taken for the next response


@in_loop
async def test_a_body_cut_short_is_a_protocol_error(raw_server: RawServerFactory) -> None:
    def serve_half(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(answer(b"x" * 10)[:-5])

    server = raw_server(serve_half)
    response = await call(server.url)

    with pytest.raises(ProtocolError):
        b"".join([chunk async for chunk in response.stream(1024)])


@in_loop
async def test_a_refused_connection_is_a_new_connection_error() -> None:
    with pytest.raises(NewConnectionError):
        await call(closed_port_url())


@in_loop
async def test_a_compressed_document_is_decoded_when_read_whole(raw_server: RawServerFactory) -> None:
    def serve_gzip(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(answer(gzip.compress(b'{"ok": true}'), "Content-Encoding: gzip"))

    response = await call(raw_server(serve_gzip).url)

    assert await response.read(1000, decode_content=True) == b'{"ok": true}'
    response.release_conn()


@in_loop
async def test_a_compressed_document_is_decoded_no_further_than_asked(raw_server: RawServerFactory) -> None:
    document = b"0123456789" * 100_000  # 1 MB that compresses to a few KB
    server = raw_server(answering_in_writes(answer(gzip.compress(document), "Content-Encoding: gzip")))

    response = await call(server.url)
    assert await response.read(1001, decode_content=True) == document[:1001]  # the gateway's "too large" probe
    assert await response.read(decode_content=True) == document[1001:]  # the rest is not lost
    assert response.closed
    response.release_conn()


@in_loop
async def test_an_ipv6_literal_instance_is_reached_without_its_brackets() -> None:
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            read_request(conn)
            conn.sendall(answer(b"ok"))

    threading.Thread(target=serve, daemon=True).start()
    try:
        response = await call(f"http://[::1]:{listener.getsockname()[1]}")
        assert (response.status, await read_all(response)) == (200, b"ok")
    finally:
        listener.close()


@in_loop
async def test_idle_connections_the_other_end_closed_leave_the_pool_at_once(raw_server: RawServerFactory) -> None:
    # given the loop's idle connections to an instance that then went away and to one still serving
    hang_up = threading.Event()

    def serve_once_then_hang_up(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(answer(b"gone"))
            hang_up.wait(2)

    departed, staying = raw_server(serve_once_then_hang_up), raw_server(answering_in_writes(answer(b"here")))
    assert await read_all(await call(departed.url)) == b"gone"
    assert await read_all(await call(staying.url)) == b"here"
    assert (idle(departed.url), idle(staying.url)) == (1, 1)

    # when the first instance closes its end, with no request to either meanwhile
    hang_up.set()
    departed.close()
    await asyncio.sleep(0.2)

    # then only the live connection is kept, and it is reused
    assert list(connections._pools[asyncio.get_running_loop()]) == [staying.url]
    assert await read_all(await call(staying.url)) == b"here"
    assert staying.accepted == 1


# HTTP/1.1 framing (RFC 9112 6.3): where each response's body ends, and whether its connection can carry
# the next request.


@in_loop
async def test_a_content_length_body_is_read_to_its_length_and_its_connection_kept(
    raw_server: RawServerFactory,
) -> None:
    server = raw_server(answering_in_writes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"01234", b"56789"))

    assert await read_all(await call(server.url)) == b"0123456789"
    assert await read_all(await call(server.url)) == b"0123456789"
    assert server.accepted == 1


@in_loop
async def test_a_chunked_body_is_passed_on_dechunked_without_its_trailers_and_its_connection_kept(
    raw_server: RawServerFactory,
) -> None:
    server = raw_server(
        answering_in_writes(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n",
            b"5\r\nhello\r\n",
            b"1;ext=1\r\n \r\n6\r\nworld!\r\n",
            b"0\r\nX-Checksum: abc\r\n\r\n",
        )
    )

    response = await call(server.url)
    assert await read_all(response) == b"hello world!"
    assert "X-Checksum" not in response.headers
    assert await read_all(await call(server.url)) == b"hello world!"
    assert server.accepted == 1


@in_loop
async def test_a_body_delimited_by_the_connection_closing_is_read_to_its_end_and_the_connection_not_reused(
    raw_server: RawServerFactory,
) -> None:
    def serve_until_close(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
            time.sleep(0.05)
            conn.sendall(b"second part")

    server = raw_server(serve_until_close)

    response = await call(server.url)
    assert await read_all(response) == b"first part, second part"
    assert response.closed
    assert await read_all(await call(server.url)) == b"first part, second part"
    assert server.accepted == 2


@in_loop
async def test_a_head_response_with_a_content_length_is_not_waited_on(raw_server: RawServerFactory) -> None:
    # the service keeps the connection open and sends no body: waiting for 5000 bytes would time out
    server = raw_server(answering_in_writes(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"))

    started = time.monotonic()
    response = await call(server.url, "HEAD")
    assert (response.status, response.headers["Content-Length"]) == (200, "5000")
    assert await read_all(response) == b""
    assert time.monotonic() - started < 1
    assert await read_all(await call(server.url, "HEAD")) == b""
    assert server.accepted == 1


@pytest.mark.parametrize(
    "head", [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5000\r\n\r\n"]
)
@in_loop
async def test_no_content_and_not_modified_responses_have_no_body(raw_server: RawServerFactory, head: bytes) -> None:
    server = raw_server(answering_in_writes(head))

    response = await call(server.url, read_timeout=1)
    assert response.closed
    assert await read_all(response) == b""
    assert await read_all(await call(server.url, read_timeout=1)) == b""
    assert server.accepted == 1


@in_loop
async def test_interim_responses_are_skipped_before_the_final_one(raw_server: RawServerFactory) -> None:
    server = raw_server(
        answering_in_writes(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n",
            b"{}",
        )
    )

    response = await call(server.url, "POST", b"{}")
    assert (response.status, response.reason, await read_all(response)) == (201, "Created", b"{}")
    assert "Link" not in response.headers
    assert await read_all(await call(server.url, "POST", b"{}")) == b"{}"
    assert server.accepted == 1


@pytest.mark.parametrize(
    ("head", "connections_opened"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", 2),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", 2),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n", 1),  # as http.client did
    ],
)
@in_loop
async def test_a_connection_the_service_means_to_close_is_not_reused(
    raw_server: RawServerFactory, head: bytes, connections_opened: int
) -> None:
    # the service leaves its end open: only the response says the connection is done
    server = raw_server(answering_in_writes(head + b"ok"))

    assert await read_all(await call(server.url)) == b"ok"
    assert await read_all(await call(server.url)) == b"ok"
    assert server.accepted == connections_opened


@in_loop
async def test_transfer_encoding_beside_content_length_is_read_chunked_and_its_connection_not_reused(
    raw_server: RawServerFactory,
) -> None:
    server = raw_server(
        answering_in_writes(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    )

    assert await read_all(await call(server.url)) == b"hello"
    assert await read_all(await call(server.url)) == b"hello"
    assert server.accepted == 2


@in_loop
async def test_a_folded_header_line_is_joined_by_its_whitespace(raw_server: RawServerFactory) -> None:
    server = raw_server(answering_in_writes(b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok"))

    response = await call(server.url)
    assert (response.headers["X-Folded"], await read_all(response)) == ("a b", b"ok")


@in_loop
async def test_a_folded_header_line_split_across_reads_is_joined_too(raw_server: RawServerFactory) -> None:
    # the lenient re-parse covers everything received so far, not only the last read
    server = raw_server(
        answering_in_writes(b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n", b" b\r\nContent-Length: 2\r\n\r\nok", pause=0.02)
    )

    response = await call(server.url)
    assert (response.headers["X-Folded"], await read_all(response)) == ("a b", b"ok")


@in_loop
async def test_stray_bytes_after_a_response_keep_its_connection_from_being_reused(
    raw_server: RawServerFactory,
) -> None:
    # a body sent with a 204, which has none: it would be taken for the start of the next response
    server = raw_server(answering_in_writes(b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nhi"))

    assert await read_all(await call(server.url)) == b""
    assert await read_all(await call(server.url)) == b""
    assert server.accepted == 2


@in_loop
async def test_repeated_headers_and_the_reason_phrase_are_kept_as_the_service_sent_them(
    raw_server: RawServerFactory,
) -> None:
    server = raw_server(
        answering_in_writes(
            b"HTTP/1.1 201 Made It\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2, c\r\nX-Latin: caf\xe9\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
    )

    response = await call(server.url)
    assert (response.status, response.reason) == (201, "Made It")
    assert response.headers.getlist("Set-Cookie") == ["a=1; Path=/", "b=2, c"]
    assert response.headers["X-Latin"] == "café"
    response.release_conn()


@in_loop
async def test_a_large_body_is_streamed_in_chunks_of_at_most_the_size_asked(raw_server: RawServerFactory) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    server = raw_server(answering_in_writes(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode(), body))

    response = await call(server.url)
    chunks = [chunk async for chunk in response.stream(10_000)]
    response.release_conn()

    assert b"".join(chunks) == body
    assert max(len(chunk) for chunk in chunks) <= 10_000
    assert min(len(chunk) for chunk in chunks) > 0


@in_loop
async def test_a_document_read_whole_is_complete_however_it_arrives(raw_server: RawServerFactory) -> None:
    server = raw_server(
        answering_in_writes(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b'8\r\n{"a": 1,\r\n',
            b'9\r\n "b": 22}\r\n0\r\n\r\n',
            pause=0.02,
        )
    )

    response = await call(server.url)
    assert await response.read(1000) == b'{"a": 1, "b": 22}'
    response.release_conn()
    assert await read_all(await call(server.url)) == b'{"a": 1, "b": 22}'
    assert server.accepted == 1


@in_loop
async def test_a_read_of_some_bytes_returns_that_many_and_leaves_the_rest(raw_server: RawServerFactory) -> None:
    server = raw_server(answering_in_writes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"01234", b"56789"))

    response = await call(server.url)
    assert await response.read(7) == b"0123456"
    assert not response.closed
    assert await response.read() == b"789"
    assert response.closed
    response.release_conn()


@in_loop
async def test_the_request_carries_what_http_client_added_and_goes_out_whole(raw_server: RawServerFactory) -> None:
    received: list[bytes] = []

    def record(conn: socket.socket) -> None:
        with conn:
            data = b""
            while not data.endswith(b"{}"):
                data += conn.recv(65536)
            received.append(data)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    server = raw_server(record)
    port = server.url.rpartition(":")[2]

    await read_all(await call(server.url, "POST", b"{}"))

    assert received == [
        f"POST /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept-Encoding: identity\r\n"
        f"User-Agent: {connections.DEFAULT_USER_AGENT}\r\nContent-Length: 2\r\n\r\n{{}}".encode()
    ]


@in_loop
async def test_a_large_request_body_goes_out_whole_after_its_head(raw_server: RawServerFactory) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: more than MAX_JOINED_BODY, written on its own
    received: list[bytes] = []

    def record(conn: socket.socket) -> None:
        with conn:
            data = read_request(conn)
            while len(data) < len(body) + data.index(b"\r\n\r\n") + 4:
                data += conn.recv(65536)
            received.append(data.partition(b"\r\n\r\n")[2])
            conn.sendall(answer(b"ok"))

    server = raw_server(record)

    assert await read_all(await call(server.url, "PUT", body)) == b"ok"
    assert received == [body]


@pytest.mark.parametrize(
    ("target", "headers"),
    [("/x", {"X-Evil": "a\r\nX-Injected: 1"}), ("/x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /y", {}), ("/é", {})],
)
@in_loop
async def test_a_request_that_would_break_its_framing_is_never_sent(
    raw_server: RawServerFactory, target: str, headers: dict[str, str]
) -> None:
    server = raw_server(answering_in_writes(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))

    with pytest.raises(ProtocolError):
        await connections.request(
            server.url, "GET", target, headers=headers, body=None, connect_timeout=1, read_timeout=1
        )
    assert server.accepted == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Huge: " + b"x" * 2 * connections.MAX_HEAD_BYTES + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Huge: " + b"x" * connections.MAX_HEAD_BYTES + b"\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=[
        "not-http",
        "status-below-100",
        "bad-length",
        "two-lengths",
        "nul-in-header",
        "upgrade",
        "head-too-large",
        "head-too-large-in-one-read",
    ],
)
@in_loop
async def test_a_response_the_parser_refuses_is_a_protocol_error(raw_server: RawServerFactory, raw: bytes) -> None:
    server = raw_server(answering_in_writes(raw))

    with pytest.raises(ProtocolError):
        await call(server.url)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["closed-mid-head", "closed-mid-chunks", "invalid-chunk"],
)
@in_loop
async def test_an_exchange_broken_mid_response_is_a_protocol_error(raw_server: RawServerFactory, raw: bytes) -> None:
    def serve_then_close(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(raw)

    server = raw_server(serve_then_close)

    with pytest.raises(ProtocolError):
        await read_all(await call(server.url))


@in_loop
async def test_what_came_before_a_broken_body_is_handed_out_first(raw_server: RawServerFactory) -> None:
    def serve_then_break(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n")

    response = await call(raw_server(serve_then_break).url)

    chunks = response.stream(1024)
    assert await anext(chunks) == b"hello"
    with pytest.raises(ProtocolError):
        await anext(chunks)


@in_loop
async def test_a_connection_reset_before_the_response_is_a_protocol_error(raw_server: RawServerFactory) -> None:
    def reset(conn: socket.socket) -> None:
        read_request(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        conn.close()

    with pytest.raises(ProtocolError):
        await call(raw_server(reset).url)


@pytest.mark.parametrize(
    "sent",
    [b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"],
    ids=["no-answer", "half-a-head", "half-a-body"],
)
@in_loop
async def test_a_service_silent_past_the_read_timeout_is_a_read_timeout_error(
    raw_server: RawServerFactory, sent: bytes
) -> None:
    done = threading.Event()

    def answer_then_fall_silent(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(sent)
            done.wait(2)

    server = raw_server(answer_then_fall_silent)
    started = time.monotonic()
    try:
        with pytest.raises(ReadTimeoutError):
            await read_all(await call(server.url, read_timeout=0.2))
    finally:
        done.set()
    assert time.monotonic() - started < 1


@in_loop
async def test_a_slow_but_steady_body_is_no_timeout_the_read_timeout_is_per_wait(raw_server: RawServerFactory) -> None:
    pieces = [b"%d" % digit for digit in range(5)]
    server = raw_server(answering_in_writes(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", *pieces, pause=0.1))

    # 0.5 s in all, never 0.3 s without a byte
    assert await read_all(await call(server.url, read_timeout=0.3)) == b"01234"


@in_loop
async def test_an_instance_that_does_not_accept_in_time_is_a_connect_timeout_error() -> None:
    with unanswered_port() as port, pytest.raises(ConnectTimeoutError):
        await connections.request(
            f"http://127.0.0.1:{port}", "GET", "/x", headers={}, body=None, connect_timeout=0.2, read_timeout=1
        )


# Flow control: a large body is never buffered whole.


@in_loop
async def test_a_body_the_consumer_does_not_take_stops_the_reading_until_it_does(raw_server: RawServerFactory) -> None:
    body = bytes(range(256)) * (64 * 1024)  # 16 MiB
    server = raw_server(answering_in_writes(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode(), body))
    # what may wait: up to PAUSE_ABOVE, plus what the transport read at once when it got there
    bound = connections.PAUSE_ABOVE + 256 * 1024

    response = await call(server.url)
    await asyncio.sleep(0.3)  # the consumer is slow: the service could have sent it all meanwhile
    assert response._unread <= bound
    assert response._connection is not None
    assert not response._connection.transport.is_reading()

    received: list[bytes] = []
    async for chunk in response.stream(64 * 1024):
        received.append(chunk)
        assert response._unread <= bound
    response.release_conn()

    assert b"".join(received) == body
    # reading resumed and the connection went back whole: it carries the next request
    again = await call(server.url)
    assert await again.read() == body
    again.release_conn()
    assert server.accepted == 1


# The pool: one per event loop, a connection to each concurrent request.


@in_loop
async def test_concurrent_requests_on_one_loop_each_get_a_connection_of_their_own(
    raw_server: RawServerFactory,
) -> None:
    together = threading.Barrier(4)

    def serve_once_all_are_in(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, threading.BrokenBarrierError):
            first = True
            while read_request(conn):
                if first:  # only four connections open at once get past this
                    together.wait(2)
                    first = False
                conn.sendall(answer(b"%d" % conn.fileno()))

    server = raw_server(serve_once_all_are_in)
    opened = connections.opened

    async def one() -> bytes:
        return await read_all(await call(server.url))

    first = await asyncio.gather(*(one() for _ in range(4)))
    assert len(set(first)) == 4  # four connections
    assert (server.accepted, connections.opened - opened, idle(server.url)) == (4, 4, 4)

    again = await asyncio.gather(*(one() for _ in range(4)))
    assert set(again) == set(first)  # the same four, reused
    assert (server.accepted, connections.opened - opened) == (4, 4)


@in_loop
async def test_at_most_max_idle_per_origin_connections_are_kept(
    raw_server: RawServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections, "MAX_IDLE_PER_ORIGIN", 2)
    closed_by_client = threading.Semaphore(0)

    def serve(conn: socket.socket) -> None:
        answering_in_writes(answer(b"ok"))(conn)  # until the client closes the connection
        closed_by_client.release()

    server = raw_server(serve)
    responses = await asyncio.gather(*(call(server.url) for _ in range(4)))
    for response in responses:
        assert await read_all(response) == b"ok"

    assert idle(server.url) == 2
    for _ in range(2):  # the other two were closed
        assert await asyncio.to_thread(closed_by_client.acquire, timeout=2)


def test_connections_belong_to_the_loop_that_opened_them(raw_server: RawServerFactory) -> None:
    closed_by_client = threading.Semaphore(0)

    def serve(conn: socket.socket) -> None:
        answering_in_writes(answer(b"ok"))(conn)  # until the client closes the connection
        closed_by_client.release()

    server = raw_server(serve)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(read_all(first.run_until_complete(call(server.url)))) == b"ok"
        assert second.run_until_complete(read_all(second.run_until_complete(call(server.url)))) == b"ok"
        assert server.accepted == 2  # the second loop did not take the first one's connection
        assert first.run_until_complete(read_all(first.run_until_complete(call(server.url)))) == b"ok"
        assert server.accepted == 2  # each loop reuses its own
        assert [len(connections._pools[loop][server.url]) for loop in (first, second)] == [1, 1]

        # close_all, from no loop at all: both loops' connections are closed
        connections.close_all()
        for loop in (first, second):
            assert server.url not in connections._pools[loop]
            loop.run_until_complete(asyncio.sleep(0))  # the transports' last callbacks
        assert closed_by_client.acquire(timeout=2)
        assert closed_by_client.acquire(timeout=2)
    finally:
        first.close()
        second.close()


def test_close_all_reaches_a_loop_running_on_another_thread(raw_server: RawServerFactory) -> None:
    closed_by_client = threading.Event()

    def serve(conn: socket.socket) -> None:
        answering_in_writes(answer(b"ok"))(conn)  # until the client closes the connection
        closed_by_client.set()

    server = raw_server(serve)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def fetch() -> bytes:
        return await read_all(await call(server.url))

    async def close_all() -> None:
        connections.close_all()
        await asyncio.sleep(0)  # the transports' last callbacks

    try:
        assert asyncio.run_coroutine_threadsafe(fetch(), loop).result(2) == b"ok"
        connections.close_all()
        assert closed_by_client.wait(2)  # closed by that loop, on its own thread
        assert asyncio.run_coroutine_threadsafe(fetch(), loop).result(2) == b"ok"
        assert server.accepted == 2
    finally:
        asyncio.run_coroutine_threadsafe(close_all(), loop).result(2)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(2)
        loop.close()


@pytest.mark.parametrize("how", ["closed", "reset", "stray-bytes"])
@in_loop
async def test_a_connection_the_service_ends_while_idle_is_dropped_and_never_handed_out(
    raw_server: RawServerFactory, how: str
) -> None:
    answered, ended = threading.Event(), threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            first = not answered.is_set()
            if not read_request(conn):
                return
            conn.sendall(answer(b"ok"))
            if first:
                answered.set()
                time.sleep(0.1)  # idle by now
                if how == "stray-bytes":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # answering nothing asked
                    ended.set()
                    time.sleep(1)  # its end kept open: only the bytes tell
                    return
                if how == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
                conn.close()
                ended.set()
                return
            while read_request(conn):
                conn.sendall(answer(b"ok"))

    server = raw_server(serve)
    assert await read_all(await call(server.url)) == b"ok"
    assert idle(server.url) == 1

    await asyncio.to_thread(ended.wait, 2)
    await asyncio.sleep(0.05)
    assert idle(server.url) == 0

    assert await read_all(await call(server.url, "POST", b"{}")) == b"ok"
    assert server.accepted == 2


# A response its consumer abandons: the connection is closed, never reused.


@in_loop
async def test_a_request_cancelled_while_waiting_for_its_head_closes_its_connection(
    raw_server: RawServerFactory,
) -> None:
    client_closed = threading.Event()

    def serve_never(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            read_request(conn)
            if conn.recv(1) == b"":  # nothing but the client closing its end
                client_closed.set()

    server = raw_server(serve_never)
    waiting = asyncio.create_task(call(server.url))
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    assert await asyncio.to_thread(client_closed.wait, 2)
    assert idle(server.url) == 0


@in_loop
async def test_a_consumer_cancelled_while_waiting_for_the_body_leaves_its_connection_closed(
    raw_server: RawServerFactory,
) -> None:
    server = raw_server(
        answering_in_writes(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", b"cd", pause=0.3)  # "cd" comes late
    )

    response = await call(server.url)
    reading = asyncio.create_task(response.read())
    await asyncio.sleep(0.1)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert not response.closed
    response.close()
    response.release_conn()

    assert idle(server.url) == 0
    assert await read_all(await call(server.url)) == b"abcd"
    assert server.accepted == 2


# https: the connection wrapped in TLS, verified against the system's CAs as http.client did.


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


TlsServerFactory = Callable[..., RawServer]


@pytest.fixture
def tls_serving(raw_server: RawServerFactory, tls_files: tuple[Path, Path]) -> TlsServerFactory:
    """Starts a TLS server answering every request with the given writes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)

    def start(*writes: bytes) -> RawServer:
        def serve(conn: socket.socket) -> None:
            try:
                tls = context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()  # the client refused the certificate
                return
            answering_in_writes(*writes)(tls)

        return raw_server(serve)

    return start


@pytest.fixture
def tls_server(tls_serving: TlsServerFactory) -> RawServer:
    return tls_serving(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", b"secret")


@pytest.fixture
def trusted(tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The test certificate is trusted."""
    trusting = ssl.create_default_context(cafile=tls_files[0])
    monkeypatch.setattr(connections, "_tls_context", lambda: trusting)


@pytest.mark.usefixtures("trusted")
@in_loop
async def test_an_https_instance_is_reached_over_verified_tls(tls_server: RawServer) -> None:
    url = tls_server.url.replace("http://", "https://")

    assert await read_all(await call(url)) == b"secret"
    assert await read_all(await call(url)) == b"secret"
    assert tls_server.accepted == 1


@pytest.mark.usefixtures("trusted")
@in_loop
async def test_a_large_body_over_tls_is_paced_by_its_consumer_and_arrives_whole(
    tls_serving: TlsServerFactory,
) -> None:
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB
    server = tls_serving(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode(), body)
    url = server.url.replace("http://", "https://")

    response = await call(url)
    await asyncio.sleep(0.3)
    assert response._unread <= connections.PAUSE_ABOVE + 256 * 1024
    assert await response.read() == body
    response.release_conn()
    assert await read_all(await call(url)) == body
    assert server.accepted == 1


@in_loop
async def test_an_https_instance_with_an_untrusted_certificate_is_a_new_connection_error(
    tls_server: RawServer,
) -> None:
    with pytest.raises(NewConnectionError):
        await call(tls_server.url.replace("http://", "https://"))
