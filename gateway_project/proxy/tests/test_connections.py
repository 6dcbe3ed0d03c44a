"""The proxy's keep-alive connections to the services (proxy/connections.py), against raw loopback servers
that misbehave in the ways a real service or network can."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from urllib3.exceptions import NewConnectionError, ProtocolError

from proxy import connections
from proxy.tests.utils import RawServer, closed_port_url, read_request


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


def call(url: str, method: str = "GET", body: bytes | None = None) -> connections.Response:
    return connections.request(
        url,
        method,
        "/x",
        headers={"Content-Length": str(len(body or b""))},
        body=body,
        connect_timeout=1,
        read_timeout=2,
    )


def read_all(response: connections.Response) -> bytes:
    content = b"".join(response.stream(1024))
    response.release_conn()
    return content


def test_an_idle_connection_the_service_closed_is_replaced_before_anything_is_sent_on_it(
    raw_server: Callable[[Callable[[socket.socket], None]], RawServer],
) -> None:
    closed = threading.Event()

    def serve_one_then_close(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(answer(b"one"))  # keep-alive, then gone: as a service's idle timeout does
        closed.set()

    server = raw_server(serve_one_then_close)
    assert read_all(call(server.url)) == b"one"
    closed.wait(2)

    # a POST is never retried: it only succeeds if the dead connection was noticed before sending
    assert read_all(call(server.url, "POST", b"{}")) == b"one"
    assert server.accepted == 2


def test_a_partly_read_body_closes_its_connection_and_a_whole_one_keeps_it(
    raw_server: Callable[[Callable[[socket.socket], None]], RawServer],
) -> None:
    def serve_forever(conn: socket.socket) -> None:
        with conn:
            while read_request(conn):
                conn.sendall(answer(b"x" * 5000))

    server = raw_server(serve_forever)
    assert len(read_all(call(server.url))) == 5000
    assert len(read_all(call(server.url))) == 5000
    assert server.accepted == 1  # read to the end: the connection was used again

    partly = call(server.url)
    next(partly.stream(1000))
    partly.close()  # the client went away mid-body
    partly.release_conn()
    assert len(read_all(call(server.url))) == 5000
    assert server.accepted == 2  # what was left unread must not be taken for the next response


def test_a_body_cut_short_is_a_protocol_error(
    raw_server: Callable[[Callable[[socket.socket], None]], RawServer],
) -> None:
    def serve_half(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(answer(b"x" * 10)[:-5])

    server = raw_server(serve_half)
    response = call(server.url)

    with pytest.raises(ProtocolError):
        b"".join(response.stream(1024))


def test_a_refused_connection_is_a_new_connection_error() -> None:
    with pytest.raises(NewConnectionError):
        call(closed_port_url())


def test_a_compressed_document_is_decoded_when_read_whole(
    raw_server: Callable[[Callable[[socket.socket], None]], RawServer],
) -> None:
    def serve_gzip(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(answer(gzip.compress(b'{"ok": true}'), "Content-Encoding: gzip"))

    response = call(raw_server(serve_gzip).url)

    assert response.read(1000, decode_content=True) == b'{"ok": true}'


def test_an_ipv6_literal_instance_is_reached_without_its_brackets() -> None:
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)

    def serve() -> None:
        conn, _ = listener.accept()
        read_request(conn)
        conn.sendall(answer(b"ok"))

    threading.Thread(target=serve, daemon=True).start()
    try:
        response = call(f"http://[::1]:{listener.getsockname()[1]}")
        assert (response.status, read_all(response)) == (200, b"ok")
    finally:
        listener.close()


def test_idle_connections_the_other_end_closed_are_swept(
    raw_server: Callable[[Callable[[socket.socket], None]], RawServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given this thread's idle connections to an instance that then went away and to one still serving
    hang_up = threading.Event()

    def serve_once_then_hang_up(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(answer(b"gone"))
            hang_up.wait(2)

    def serve_forever(conn: socket.socket) -> None:
        with conn:
            while read_request(conn):
                conn.sendall(answer(b"here"))

    departed, staying = raw_server(serve_once_then_hang_up), raw_server(serve_forever)
    assert read_all(call(departed.url)) == b"gone"
    assert read_all(call(staying.url)) == b"here"
    hang_up.set()
    departed.close()
    time.sleep(0.2)

    # when the thread's next call comes after the sweep interval
    monkeypatch.setattr(connections, "SWEEP_INTERVAL", 0.0)
    assert read_all(call(staying.url)) == b"here"

    # then only the live connection is kept, and it was reused
    assert list(connections._idle()) == [staying.url]
    assert staying.accepted == 1
