"""The proxy's keep-alive connections to the services (proxy/connections.py), against raw loopback servers
that misbehave in the ways a real service or network can."""

from __future__ import annotations

import contextlib
import datetime
import gzip
import ipaddress
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError, ReadTimeoutError

from common.testing import unanswered_port
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


RawServerFactory = Callable[[Callable[[socket.socket], None]], RawServer]


def call(url: str, method: str = "GET", body: bytes | None = None, *, read_timeout: float = 2) -> connections.Response:
    return connections.request(
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


# HTTP/1.1 framing (RFC 9112 6.3): where each response's body ends, and whether its connection can carry
# the next request.


def test_a_content_length_body_is_read_to_its_length_and_its_connection_kept(raw_server: RawServerFactory) -> None:
    server = raw_server(answering_in_writes(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"01234", b"56789"))

    assert read_all(call(server.url)) == b"0123456789"
    assert read_all(call(server.url)) == b"0123456789"
    assert server.accepted == 1


def test_a_chunked_body_is_passed_on_dechunked_without_its_trailers_and_its_connection_kept(
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

    response = call(server.url)
    assert read_all(response) == b"hello world!"
    assert "X-Checksum" not in response.headers
    assert read_all(call(server.url)) == b"hello world!"
    assert server.accepted == 1


def test_a_body_delimited_by_the_connection_closing_is_read_to_its_end_and_the_connection_not_reused(
    raw_server: RawServerFactory,
) -> None:
    def serve_until_close(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
            time.sleep(0.05)
            conn.sendall(b"second part")

    server = raw_server(serve_until_close)

    response = call(server.url)
    assert read_all(response) == b"first part, second part"
    assert response.closed
    assert read_all(call(server.url)) == b"first part, second part"
    assert server.accepted == 2


def test_a_head_response_with_a_content_length_is_not_waited_on(raw_server: RawServerFactory) -> None:
    # the service keeps the connection open and sends no body: waiting for 5000 bytes would time out
    server = raw_server(answering_in_writes(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"))

    started = time.monotonic()
    response = call(server.url, "HEAD")
    assert (response.status, response.headers["Content-Length"]) == (200, "5000")
    assert read_all(response) == b""
    assert time.monotonic() - started < 1
    assert read_all(call(server.url, "HEAD")) == b""
    assert server.accepted == 1


@pytest.mark.parametrize(
    "head", [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5000\r\n\r\n"]
)
def test_no_content_and_not_modified_responses_have_no_body(raw_server: RawServerFactory, head: bytes) -> None:
    server = raw_server(answering_in_writes(head))

    response = call(server.url, read_timeout=1)
    assert response.closed
    assert read_all(response) == b""
    assert read_all(call(server.url, read_timeout=1)) == b""
    assert server.accepted == 1


def test_interim_responses_are_skipped_before_the_final_one(raw_server: RawServerFactory) -> None:
    server = raw_server(
        answering_in_writes(
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n",
            b"{}",
        )
    )

    response = call(server.url, "POST", b"{}")
    assert (response.status, response.reason, read_all(response)) == (201, "Created", b"{}")
    assert "Link" not in response.headers
    assert read_all(call(server.url, "POST", b"{}")) == b"{}"
    assert server.accepted == 1


@pytest.mark.parametrize(
    ("head", "connections_opened"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", 2),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", 2),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n", 1),  # as http.client did
    ],
)
def test_a_connection_the_service_means_to_close_is_not_reused(
    raw_server: RawServerFactory, head: bytes, connections_opened: int
) -> None:
    # the service leaves its end open: only the response says the connection is done
    server = raw_server(answering_in_writes(head + b"ok"))

    assert read_all(call(server.url)) == b"ok"
    assert read_all(call(server.url)) == b"ok"
    assert server.accepted == connections_opened


def test_transfer_encoding_beside_content_length_is_read_chunked_and_its_connection_not_reused(
    raw_server: RawServerFactory,
) -> None:
    server = raw_server(
        answering_in_writes(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    )

    assert read_all(call(server.url)) == b"hello"
    assert read_all(call(server.url)) == b"hello"
    assert server.accepted == 2


def test_a_folded_header_line_is_joined_by_its_whitespace(raw_server: RawServerFactory) -> None:
    server = raw_server(answering_in_writes(b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok"))

    response = call(server.url)
    assert (response.headers["X-Folded"], read_all(response)) == ("a b", b"ok")


def test_stray_bytes_after_a_response_keep_its_connection_from_being_reused(raw_server: RawServerFactory) -> None:
    # a body sent with a 204, which has none: it would be taken for the start of the next response
    server = raw_server(answering_in_writes(b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nhi"))

    assert read_all(call(server.url)) == b""
    assert read_all(call(server.url)) == b""
    assert server.accepted == 2


def test_repeated_headers_and_the_reason_phrase_are_kept_as_the_service_sent_them(
    raw_server: RawServerFactory,
) -> None:
    server = raw_server(
        answering_in_writes(
            b"HTTP/1.1 201 Made It\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2, c\r\nX-Latin: caf\xe9\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
    )

    response = call(server.url)
    assert (response.status, response.reason) == (201, "Made It")
    assert response.headers.getlist("Set-Cookie") == ["a=1; Path=/", "b=2, c"]
    assert response.headers["X-Latin"] == "café"


def test_a_large_body_is_streamed_in_chunks_of_at_most_the_size_asked(raw_server: RawServerFactory) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    server = raw_server(answering_in_writes(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode(), body))

    chunks = list(call(server.url).stream(10_000))

    assert b"".join(chunks) == body
    assert max(len(chunk) for chunk in chunks) <= 10_000


def test_a_document_read_whole_is_complete_however_it_arrives(raw_server: RawServerFactory) -> None:
    server = raw_server(
        answering_in_writes(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b'8\r\n{"a": 1,\r\n',
            b'9\r\n "b": 22}\r\n0\r\n\r\n',
            pause=0.02,
        )
    )

    response = call(server.url)
    assert response.read(1000) == b'{"a": 1, "b": 22}'
    response.release_conn()
    assert read_all(call(server.url)) == b'{"a": 1, "b": 22}'
    assert server.accepted == 1


def test_the_request_carries_what_http_client_added_and_goes_out_whole(raw_server: RawServerFactory) -> None:
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

    read_all(call(server.url, "POST", b"{}"))

    assert received == [
        f"POST /x HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept-Encoding: identity\r\n"
        f"User-Agent: {connections.DEFAULT_USER_AGENT}\r\nContent-Length: 2\r\n\r\n{{}}".encode()
    ]


@pytest.mark.parametrize(
    ("target", "headers"),
    [("/x", {"X-Evil": "a\r\nX-Injected: 1"}), ("/x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /y", {}), ("/é", {})],
)
def test_a_request_that_would_break_its_framing_is_never_sent(
    raw_server: RawServerFactory, target: str, headers: dict[str, str]
) -> None:
    server = raw_server(answering_in_writes(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))

    with pytest.raises(ProtocolError):
        connections.request(server.url, "GET", target, headers=headers, body=None, connect_timeout=1, read_timeout=1)
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
    ],
    ids=["not-http", "status-below-100", "bad-length", "two-lengths", "nul-in-header", "upgrade", "head-too-large"],
)
def test_a_response_the_parser_refuses_is_a_protocol_error(raw_server: RawServerFactory, raw: bytes) -> None:
    server = raw_server(answering_in_writes(raw))

    with pytest.raises(ProtocolError):
        call(server.url)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["closed-mid-head", "closed-mid-chunks", "invalid-chunk"],
)
def test_an_exchange_broken_mid_response_is_a_protocol_error(raw_server: RawServerFactory, raw: bytes) -> None:
    def serve_then_close(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(raw)

    server = raw_server(serve_then_close)

    with pytest.raises(ProtocolError):
        read_all(call(server.url))


def test_a_connection_reset_before_the_response_is_a_protocol_error(raw_server: RawServerFactory) -> None:
    def reset(conn: socket.socket) -> None:
        read_request(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        conn.close()

    with pytest.raises(ProtocolError):
        call(raw_server(reset).url)


@pytest.mark.parametrize(
    "sent",
    [b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"],
    ids=["no-answer", "half-a-head", "half-a-body"],
)
def test_a_service_silent_past_the_read_timeout_is_a_read_timeout_error(
    raw_server: RawServerFactory, sent: bytes
) -> None:
    done = threading.Event()

    def answer_then_fall_silent(conn: socket.socket) -> None:
        with conn:
            read_request(conn)
            conn.sendall(sent)
            done.wait(2)

    server = raw_server(answer_then_fall_silent)
    try:
        with pytest.raises(ReadTimeoutError):
            read_all(call(server.url, read_timeout=0.2))
    finally:
        done.set()


def test_an_instance_that_does_not_accept_in_time_is_a_connect_timeout_error() -> None:
    with unanswered_port() as port, pytest.raises(ConnectTimeoutError):
        connections.request(
            f"http://127.0.0.1:{port}", "GET", "/x", headers={}, body=None, connect_timeout=0.2, read_timeout=1
        )


# https: the socket wrapped in TLS, verified against the system's CAs as http.client did.


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


@pytest.fixture
def tls_server(raw_server: RawServerFactory, tls_files: tuple[Path, Path]) -> RawServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)

    def serve(conn: socket.socket) -> None:
        try:
            tls = context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()  # the client refused the certificate
            return
        answering_in_writes(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", b"secret")(tls)

    return raw_server(serve)


def test_an_https_instance_is_reached_over_verified_tls(
    tls_server: RawServer, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    trusting = ssl.create_default_context(cafile=tls_files[0])
    monkeypatch.setattr(connections, "_tls_context", lambda: trusting)
    url = tls_server.url.replace("http://", "https://")

    assert read_all(call(url)) == b"secret"
    assert read_all(call(url)) == b"secret"
    assert tls_server.accepted == 1


def test_an_https_instance_with_an_untrusted_certificate_is_a_new_connection_error(tls_server: RawServer) -> None:
    with pytest.raises(NewConnectionError):
        call(tls_server.url.replace("http://", "https://"))
