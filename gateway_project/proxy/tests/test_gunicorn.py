"""End to end: the gateway under a real gunicorn (its ASGI worker and ``gateway.asgi``, as the launcher runs
it), spoken to with raw HTTP so that paths and framing reach it exactly as an attacker would send them."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from common.internal_auth import verify_assertion
from proxy import views
from proxy.tests.gateway_process import GatewayProcess, gateway_process
from proxy.tests.upstream_stub import JWKS_PATH, StubUpstream

PROJECT_DIR = Path(__file__).resolve().parents[2]
BODY_LIMIT = 1000


class Gateway:
    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path

    def request(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"", timeout: float = 10
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Send exactly this request line (no client-side normalisation) and read the response."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(raw)
            response = http.client.HTTPResponse(sock, method=method)
            response.begin()
            return response.status, response.headers, response.read()

    def log(self) -> str:
        return self.log_path.read_text()

    def access_log_lines(self, request_id: str, timeout: float = 5) -> list[str]:
        """The access-log lines of a request: written once the response is closed, so just after the client
        has it, hence the short wait."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [
                line
                for line in self.log().splitlines()
                if f'"request_id":"{request_id}"' in line and '"logger":"gateway.access"' in line
            ]
            if lines or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)


@pytest.fixture(scope="module")
def gateway(stubs: dict[str, StubUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    var_dir = tmp_path_factory.mktemp("gateway-var")
    log_path = var_dir / "gunicorn.log"
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="gateway.settings",
        VAR_DIR=str(var_dir),
        SECRET_KEY=settings.SECRET_KEY,
        INTERNAL_AUTH_SECRET=settings.INTERNAL_AUTH_SECRET,
        USER_SERVICE_URL=stubs["users"].url,
        ORDER_SERVICE_URL=stubs["orders"].url,
        PAYMENT_SERVICE_URL=stubs["payments"].url,
        JWKS_URL=f"{stubs['users'].url}{JWKS_PATH}",
        MAX_REQUEST_BODY_BYTES=str(BODY_LIMIT),
        LOG_LEVEL="INFO",
    )
    # The socket is bound here and handed over, so there is no race for a free port.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    command = [
        sys.executable, "-m", "gunicorn", "gateway.asgi:application",
        "--bind", f"fd://{listener.fileno()}",
        "--worker-class", "asgi", "--workers", "1",
        "--graceful-timeout", "2",
        "--no-control-socket",  # the default path in $HOME would be shared with any other gunicorn
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 (our own command line)
            command, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()]
        )
    server = Gateway(listener.getsockname()[1], log_path)
    try:
        status, _, _ = server.request("GET", "/api/v1/nothing/", timeout=60)  # waits for the worker to boot
        assert status == 404, server.log()
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        listener.close()


def received_by_any(stubs: dict[str, StubUpstream]) -> list[Any]:
    return [request for stub in stubs.values() for request in stub.received]


TRAVERSALS = [
    "/api/v1/users/../../admin/",
    "/api/v1/users/%2e%2e/%2e%2e/admin/",
    "/api/v1/users/%2E%2E/admin/",
    "/api/v1/users/%2E./admin/",
    "/api/v1/users/.%2e/admin/",
    "/api/v1/users/%252e%252e/admin/",
    "/api/v1/users/7%2Fadmin/",
    "/api/v1/users/7%2fadmin/",
    "/api/v1/users/7%5Cadmin/",
    "/api/v1/users/7\\..\\admin/",
    "/api/v1/users//7/",
    "//api/v1/users/",
    "/api/v1/users/7%00/",
    "/api/v1/users/7%0d%0aX-Injected:%201/",
    "/api/v1/users/" + "a" * 2100,
    "/admin/users/../../admin/",
    "/admin/users/%2e%2e/%2e%2e/admin/",
    "/admin/../admin/",
    "/static/orders/../../static/gateway/admin/css/base.css",
    "http://127.0.0.1/api/v1/users/../admin/",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_unsafe_paths_are_400_and_reach_no_service(
    gateway: Gateway, stubs: dict[str, StubUpstream], target: str
) -> None:
    status, headers, body = gateway.request("GET", target)

    assert status == 400
    assert b'"invalid_path"' in body
    assert headers["X-Request-ID"]
    assert received_by_any(stubs) == []


@pytest.mark.parametrize("target", ["/api/v1/users/7\x00/", "/api/v1/users/7\x01/"])
def test_raw_control_characters_in_the_path_never_reach_a_service(
    gateway: Gateway, stubs: dict[str, StubUpstream], target: str
) -> None:
    status, _, _ = gateway.request("GET", target)

    assert status == 400  # gunicorn may refuse the request line itself, before the gateway sees it
    assert received_by_any(stubs) == []


def test_the_raw_path_and_query_are_forwarded_without_decoding(
    gateway: Gateway, orders: StubUpstream, make_token: Callable[..., str]
) -> None:
    # when (escapes in upper case: urllib3 upper-cases them, an equivalent form per RFC 3986 6.2.2.1)
    status, headers, body = gateway.request(
        "GET",
        "/api/v1/orders/caf%C3%A9/?q=a%20b&x=%2F&y=%2E%2E&z=%25",
        headers={"Authorization": f"Bearer {make_token()}", "X-Request-ID": "e2e-request-0001"},
    )

    # then
    assert status == 200, body
    received = orders.received[0]
    assert received.target == "/api/v1/orders/caf%C3%A9/?q=a%20b&x=%2F&y=%2E%2E&z=%25"
    assert received.headers["X-Request-ID"] == "e2e-request-0001"
    assert received.headers["X-Forwarded-Host"] == f"127.0.0.1:{gateway.port}"
    principal = verify_assertion(
        received.headers["X-Service-Assertion"], audience="orders", secret=settings.INTERNAL_AUTH_SECRET
    )
    assert principal.id == 7
    assert headers["X-Request-ID"] == "e2e-request-0001"
    assert len(headers.get_all("Date") or []) == 1
    assert headers.get_all("Server") == ["gunicorn/asgi"]  # gunicorn's own (its ASGI worker's), not the service's


def test_hop_by_hop_headers_are_dropped_both_ways(gateway: Gateway, orders: StubUpstream) -> None:
    # given
    orders.reply(
        "/api/v1/products/",
        headers=[
            ("Connection", "X-Upstream-Hop"),
            ("X-Upstream-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("X-Kept", "1"),
        ],
    )

    # when
    status, headers, _ = gateway.request(
        "GET", "/api/v1/products/", headers={"Connection": "close, X-Client-Hop", "X-Client-Hop": "1", "TE": "trailers"}
    )

    # then
    assert status == 200
    for name in ("X-Client-Hop", "TE"):
        assert name not in orders.received[0].headers
    for name in ("X-Upstream-Hop", "Keep-Alive"):
        assert name not in headers
    assert headers["X-Kept"] == "1"


def test_a_chunked_body_is_forwarded_with_a_length(
    gateway: Gateway, orders: StubUpstream, make_token: Callable[..., str]
) -> None:
    chunked = b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'

    status, _, body = gateway.request(
        "POST",
        "/api/v1/orders/",
        headers={
            "Authorization": f"Bearer {make_token()}",
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        },
        body=chunked,
    )

    assert status == 200, body
    received = orders.received[0]
    assert received.body == b'{"a": 1}'
    assert received.headers["Content-Length"] == "8"
    assert "Transfer-Encoding" not in received.headers


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_body_over_the_limit_is_413_and_reaches_no_service(
    gateway: Gateway, stubs: dict[str, StubUpstream], make_token: Callable[..., str], chunked: bool
) -> None:
    # given a body one chunk past the limit, with or without a declared length
    payload = b"x" * (BODY_LIMIT + 500)
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(len(payload))}
    body = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n" if chunked else payload

    # when
    status, _, response_body = gateway.request(
        "POST",
        "/api/v1/orders/",
        headers={"Authorization": f"Bearer {make_token()}", "Content-Type": "application/json", **framing},
        body=body,
    )

    # then
    assert status == 413
    assert b'"payload_too_large"' in response_body
    assert received_by_any(stubs) == []


def test_each_proxied_request_is_logged_once_without_the_token(
    gateway: Gateway, orders: StubUpstream, make_token: Callable[..., str]
) -> None:
    token = make_token(sub="42")

    gateway.request(
        "GET",
        "/api/v1/orders/9/?secret=1",
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": "e2e-log-0001"},
    )

    # one JSON line (proxy/observability.py), the route's prefix rather than the path with its ids
    lines = gateway.access_log_lines("e2e-log-0001")
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["method"] == "GET"
    assert (entry["route"], entry["upstream_service"], entry["status"], entry["user_id"]) == (
        "/api/v1/orders/",
        "orders",
        200,
        42,
    )
    assert token not in gateway.log()
    assert "secret=1" not in lines[0]


def test_a_413_closes_the_connection_without_waiting_for_the_rest_of_the_body(
    gateway: Gateway, stubs: dict[str, StubUpstream], make_token: Callable[..., str]
) -> None:
    # given a kept-alive connection on which a client announces 10 MB and sends none of it
    head = (
        f"POST /api/v1/orders/ HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n"
        f"Authorization: Bearer {make_token()}\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(head.encode())

        # when the gateway refuses the body unread
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        body = response.read()
        started = time.monotonic()
        after = sock.recv(1)  # b"": the server closed its side; a kept-alive one would wait for the body

    # then the answer says the connection closes, and it is closed at once rather than drained
    assert response.status == 413, body
    assert response.headers["Connection"] == "close"
    assert after == b""
    assert time.monotonic() - started < 2
    assert received_by_any(stubs) == []


def test_a_client_x_forwarded_proto_from_loopback_is_not_believed(gateway: Gateway, orders: StubUpstream) -> None:
    # gunicorn trusts loopback peers' scheme headers unless told not to (gunicorn.conf.py forwarded_allow_ips);
    # this gateway is started without the launcher's --forwarded-allow-ips, and trusts no proxy of its own
    status, _, body = gateway.request("GET", "/api/v1/products/", headers={"X-Forwarded-Proto": "https"})

    assert status == 200, body
    assert orders.received[0].headers.get_all("X-Forwarded-Proto") == ["http"]


def test_a_host_the_gateway_does_not_serve_is_400_in_the_envelope_with_the_rate_limit_headers(
    gateway: Gateway, stubs: dict[str, StubUpstream]
) -> None:
    raw = b"GET /api/v1/products/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method="GET")
        response.begin()
        body = response.read()

    assert response.status == 400
    assert json.loads(body)["error"]["code"] == "invalid_host"
    assert response.headers["RateLimit"].startswith('"default";')
    assert received_by_any(stubs) == []


def test_a_header_named_in_connection_never_reaches_the_service_identity_headers_included(
    gateway: Gateway, orders: StubUpstream
) -> None:
    # the literal attack: an identity header declared hop-by-hop, in the hope a filter skips what it names
    status, _, body = gateway.request("GET", "/api/v1/products/", headers={"Connection": "X-User-Id", "X-User-Id": "1"})

    assert status == 200, body
    received = orders.received[0].headers
    assert "X-User-Id" not in received
    assert "1" not in (received.get("Connection") or "")


@pytest.fixture(scope="module")
def impatient_gateway(
    stubs: dict[str, StubUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway waiting 0.3 s for an answer, whose breakers and retry budget never get in the way."""
    with gateway_process(
        tmp_path_factory.mktemp("impatient-gateway"),
        {name: stub.url for name, stub in stubs.items()},
        UPSTREAM_READ_TIMEOUT="0.3",
        UPSTREAM_CHECK_INTERVAL="0",
        BREAKER_FAILURES="1000",
        RETRY_BUDGET_MIN="1000",
    ) as process:
        yield process


@pytest.mark.parametrize("failure", ["503", "read timeout"])
@pytest.mark.parametrize(
    ("path", "idempotency_key", "attempts"),
    [
        ("/api/v1/orders/", None, 1),
        ("/api/v1/auth/refresh", "refresh-1", 1),  # the user service ignores the key: a replay spends a token
        ("/api/v1/orders/", "order-1", 3),  # the order service replays the first answer: retried
    ],
    ids=["plain", "key-ignored", "key-honoured"],
)
def test_a_post_a_service_fails_reaches_it_once_unless_it_honours_idempotency_keys(
    impatient_gateway: GatewayProcess,
    stubs: dict[str, StubUpstream],
    make_token: Callable[..., str],
    failure: str,
    path: str,
    idempotency_key: str | None,
    attempts: int,
) -> None:
    # given a service failing the POST, with a 503 or by answering after the gateway gave up waiting
    service = stubs["orders" if path.startswith("/api/v1/orders/") else "users"]
    if failure == "503":
        service.reply(path, status=503)
    else:
        service.reply(path, delay=1.0)
    headers = {"Authorization": f"Bearer {make_token()}", "Content-Type": "application/json"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key

    # when
    status, _, body = impatient_gateway.request("POST", path, headers=headers, body=b"{}")

    # then
    assert status == (503 if failure == "503" else 504), body
    assert [request.target for request in service.received] == [path] * attempts


def _answer_on(sock: socket.socket, raw: bytes) -> tuple[http.client.HTTPResponse, bytes]:
    sock.sendall(raw)
    response = http.client.HTTPResponse(sock, method="GET")
    response.begin()
    return response, response.read()


def test_connections_without_a_request_are_closed_and_those_past_the_cap_refused(
    stubs: dict[str, StubUpstream], tmp_path: Path
) -> None:
    # given a worker that holds at most 3 connections and gives each 1 s to send its first request head
    with gateway_process(
        tmp_path,
        {name: stub.url for name, stub in stubs.items()},
        GATEWAY_REQUEST_HEAD_TIMEOUT="1",
        GUNICORN_CMD_ARGS="--worker-connections 3",
    ) as gateway:
        time.sleep(0.5)  # the start-up check's connections are closed and uncounted
        address = ("127.0.0.1", gateway.port)
        request = f"GET /api/v1/products/ HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode()
        with (
            socket.create_connection(address, timeout=5) as silent,
            socket.create_connection(address, timeout=5) as slowloris,
            socket.create_connection(address, timeout=5) as kept_alive,
        ):
            slowloris.sendall(b"GET /api/v1/products/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a head never finished
            first, _ = _answer_on(kept_alive, request)

            # when a fourth connection opens
            with socket.create_connection(address, timeout=5) as fourth:
                refused, refusal = _answer_on(fourth, request)
                after_refusal = fourth.recv(1)

            # then it is refused at once in the envelope, and closed
            assert first.status == 200
            assert refused.status == 503
            assert json.loads(refusal)["error"]["code"] == "gateway_busy"
            assert refused.headers["Retry-After"] == "1"
            assert after_refusal == b""

            # and the two that never sent a whole request are closed after their second, without an answer
            started = time.monotonic()
            assert silent.recv(1) == b""
            assert slowloris.recv(1) == b""
            assert time.monotonic() - started < 3

            # while the kept-alive connection, which did, still serves, past that second
            again, _ = _answer_on(kept_alive, request)
            assert again.status == 200

        # and the places freed take new connections
        status, _, body = gateway.request("GET", "/api/v1/products/")
        assert status == 200, body


def test_a_body_sent_after_100_continue_reaches_the_service(
    gateway: Gateway, orders: StubUpstream, make_token: Callable[..., str]
) -> None:
    # given a client that holds its body back until the gateway says to go on
    body = b'{"items": []}'
    head = (
        f"POST /api/v1/orders/ HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\nConnection: close\r\n"
        f"Authorization: Bearer {make_token()}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head.encode())
        interim = sock.recv(64)
        sock.sendall(body)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        response.read()

    # then it is told to, and the service gets the body (and no Expect: the gateway read the body itself)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
    assert response.status == 200
    assert orders.received[0].body == body
    assert "Expect" not in orders.received[0].headers


@pytest.mark.parametrize("expectation", ["200-ok", "100-continue, something-else"])
def test_an_expectation_other_than_100_continue_is_417_and_reaches_no_service(
    gateway: Gateway, stubs: dict[str, StubUpstream], expectation: str
) -> None:
    status, headers, body = gateway.request(
        "POST", "/api/v1/orders/", headers={"Expect": expectation, "Content-Length": "2"}, body=b"{}"
    )

    assert status == 417, body
    assert json.loads(body)["error"]["code"] == "expectation_failed"
    assert headers["Connection"] == "close"
    assert received_by_any(stubs) == []


BODY_DEADLINE = 2.0  # GATEWAY_REQUEST_BODY_TIMEOUT of the slow-client gateway
SEND_DEADLINE = 2.0  # its GATEWAY_SEND_TIMEOUT


@pytest.fixture(scope="module")
def slow_client_gateway(
    stubs: dict[str, StubUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A worker with two threads for Django's pages that gives a request body BODY_DEADLINE seconds to arrive
    and a client SEND_DEADLINE seconds to take each part of its answer."""
    with gateway_process(
        tmp_path_factory.mktemp("slow-client"),
        {name: stub.url for name, stub in stubs.items()},
        GATEWAY_DJANGO_THREADS="2",
        GATEWAY_REQUEST_BODY_TIMEOUT=str(BODY_DEADLINE),
        GATEWAY_SEND_TIMEOUT=str(SEND_DEADLINE),
    ) as gateway:
        yield gateway


def _start_post(port: int, target: str, declared: int, first_bytes: bytes, *headers: str) -> socket.socket:
    """A POST whose head declares ``declared`` bytes of body, of which only ``first_bytes`` are sent."""
    head = [f"POST {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {declared}", *headers]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + first_bytes)
    return sock


def _read_answer(sock: socket.socket) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
    response = http.client.HTTPResponse(sock, method="POST")
    response.begin()
    return response, json.loads(response.read())


def test_bodies_that_never_finish_hold_no_thread_and_are_408_at_the_deadline(
    slow_client_gateway: GatewayProcess, stubs: dict[str, StubUpstream]
) -> None:
    gateway = slow_client_gateway
    form = "Content-Type: application/x-www-form-urlencoded"
    # given more clients than the worker has threads for Django's pages, each sending a form to a service's
    # admin page (which the gateway forwards from one of those threads) and stopping halfway
    slow = [
        _start_post(gateway.port, f"/admin/{service}/shop/item/add/", 100, b"name=a", form)
        for service in ("users", "orders", "payments")
    ]
    started = time.monotonic()

    # when someone else asks for one of its pages meanwhile
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        page, _ = _answer_on(sock, f"GET /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode())

    # then it is answered at once: the unfinished bodies wait on the event loop, not on the page threads
    assert page.status == 200
    assert time.monotonic() - started < BODY_DEADLINE - 0.5

    # and each unfinished one is refused once its time is up, in the envelope, and its connection closed
    for sock in slow:
        with sock:
            response, envelope = _read_answer(sock)
            assert response.status == 408
            assert envelope["error"]["code"] == "request_timeout"
            assert response.headers["Connection"] == "close"
            assert sock.recv(1) == b""
    assert BODY_DEADLINE - 0.5 < time.monotonic() - started < BODY_DEADLINE + 3

    # and the service never saw the forwarded one; the access log has each, with its code
    assert received_by_any(stubs) == []
    assert gateway.log().count('"error":"request_timeout"') >= 3


def test_a_body_trickled_past_the_deadline_is_408_and_reaches_no_service(
    slow_client_gateway: GatewayProcess, stubs: dict[str, StubUpstream], make_token: Callable[..., str]
) -> None:
    gateway = slow_client_gateway
    # given a client that sends its order a byte at a time, each well within any wait for the next read
    sock = _start_post(gateway.port, "/api/v1/orders/", 1000, b"{", f"Authorization: Bearer {make_token()}")
    started = time.monotonic()
    with sock:
        sock.settimeout(0.2)
        answer = b""
        while not answer and time.monotonic() - started < BODY_DEADLINE + 3:
            try:
                sock.sendall(b" ")
                answer = sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                continue
            except ConnectionError:
                break
        sock.settimeout(5)
        response, envelope = _read_answer(sock)

    # then it is refused once the body's time is up, and the service never sees any of it
    assert response.status == 408
    assert envelope["error"]["code"] == "request_timeout"
    assert response.headers["Connection"] == "close"
    assert BODY_DEADLINE - 0.5 < time.monotonic() - started < BODY_DEADLINE + 3
    assert received_by_any(stubs) == []


def test_the_body_deadline_holds_when_the_servers_wait_swallows_its_cancellation(settings: Any) -> None:
    # given a server whose receive() swallows a cancellation that comes as a piece of body arrives (as
    # asyncio.wait_for does on Python 3.11, which gunicorn's receive waits with), and a client trickling
    settings.GATEWAY_REQUEST_BODY_TIMEOUT = 0.2

    swallowed: list[bool] = []

    async def receive() -> dict[str, Any]:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if swallowed:  # the race is rare: it happens once here
                raise
            swallowed.append(True)  # the piece came with the cancellation: wait_for hands the piece over
        return {"type": "http.request", "body": b"a", "more_body": True}

    async def read() -> float:
        started = time.monotonic()
        with pytest.raises(views.RequestTimeout):
            await asyncio.wait_for(views.receive_whole_body(receive, limit=1_000_000), timeout=5)
        return time.monotonic() - started

    # then the body is refused at its deadline all the same
    assert asyncio.run(read()) < 1
    assert swallowed


def test_a_form_for_a_service_admin_page_reaches_it_whole_after_being_read_on_the_loop(
    gateway: Gateway, orders: StubUpstream
) -> None:
    # given a form sent chunked, in three pieces, to a service's admin page (Django's side of the gateway)
    form = b"name=lamp&price=12.50&notes=" + b"x" * 300
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (form[:10], form[10:200], form[200:]))
    status, _, body = gateway.request(
        "POST",
        "/admin/orders/shop/item/add/",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"},
        body=chunked + b"0\r\n\r\n",
    )

    # then the service gets all of it, once
    assert status == 200, body
    assert [request.body for request in orders.received] == [form]


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_body_over_the_limit_for_a_django_page_is_413_before_django_reads_it(
    gateway: Gateway, stubs: dict[str, StubUpstream], chunked: bool
) -> None:
    limit = 1024 * 1024  # DATA_UPLOAD_MAX_MEMORY_SIZE: above this gateway's MAX_REQUEST_BODY_BYTES
    if chunked:
        piece = b"a" * 65536
        framing, body = {"Transfer-Encoding": "chunked"}, b"%x\r\n%s\r\n" % (len(piece), piece) * 17 + b"0\r\n\r\n"
    else:
        framing, body = {"Content-Length": str(limit + 1)}, b""  # declared, never sent

    status, headers, answer = gateway.request("POST", "/admin/orders/shop/item/add/", headers=framing, body=body)

    assert status == 413
    error = json.loads(answer)["error"]
    assert (error["code"], error["details"]) == ("payload_too_large", {"max_bytes": limit})
    assert headers["Connection"] == "close"
    assert received_by_any(stubs) == []


# Larger than what the kernel's socket buffers and the server's own take in for a client that reads nothing.
LARGE_ANSWER = b"x" * (16 * 1024 * 1024)


def _stalled_reader(port: int, target: str) -> socket.socket:
    """A client that asks for ``target`` and then reads nothing (a small receive buffer, so it fills fast)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return sock


def _read_until_closed(sock: socket.socket, limit: float) -> int:
    """How much the gateway sent before it closed the connection; fails past ``limit`` seconds."""
    sock.settimeout(limit)
    received = 0
    while chunk := sock.recv(65536):
        received += len(chunk)
    return received


def test_clients_that_stop_reading_hold_a_thread_no_longer_than_the_deadline_and_never_the_health_checks(
    slow_client_gateway: GatewayProcess, orders: StubUpstream
) -> None:
    gateway = slow_client_gateway
    orders.reply("/admin/orders/export/", body=LARGE_ANSWER)
    # given more clients than the worker has threads for Django's pages, each asking for a large page of a
    # service's admin (forwarded from one of those threads), and then reading nothing
    stalled = [_stalled_reader(gateway.port, "/admin/orders/export/") for _ in range(3)]
    started = time.monotonic()
    address = ("127.0.0.1", gateway.port)

    # when a load balancer checks the gateway meanwhile, and someone asks for one of its pages
    with socket.create_connection(address, timeout=5) as sock:
        live, _ = _answer_on(sock, f"GET /health/live/ HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode())
    checked = time.monotonic() - started
    with socket.create_connection(address, timeout=SEND_DEADLINE + 5) as sock:
        page, _ = _answer_on(sock, f"GET /admin/login/ HTTP/1.1\r\nHost: 127.0.0.1:{gateway.port}\r\n\r\n".encode())
    served = time.monotonic() - started

    # then the check is answered at once, on threads of its own
    assert live.status == 200
    assert checked < 1.5
    # and the page once the stalled clients' time is up, and not later (it waited for ever before)
    assert page.status == 200
    assert served < SEND_DEADLINE + 3

    # and each stalled client's connection is closed, the rest of its answer never sent (the third waited
    # for a thread, so its time is up one deadline later; reading before that would un-stall it)
    time.sleep(max(0.0, started + 2 * SEND_DEADLINE + 1 - time.monotonic()))
    for sock in stalled:
        with sock:
            assert _read_until_closed(sock, limit=5) < len(LARGE_ANSWER)


def test_an_api_answer_a_client_stops_reading_is_cut_off_at_the_deadline(
    slow_client_gateway: GatewayProcess, orders: StubUpstream
) -> None:
    gateway = slow_client_gateway
    orders.reply("/api/v2/products/", body=LARGE_ANSWER, headers=[("Content-Type", "application/json")])
    # given a client that asks for a large answer and reads nothing of it
    with _stalled_reader(gateway.port, "/api/v2/products/?page=all") as sock:
        time.sleep(SEND_DEADLINE + 1)

        # then its connection has been closed once it had taken nothing for the deadline, the rest never sent
        assert _read_until_closed(sock, limit=5) < len(LARGE_ANSWER)

    # and the access log says why the answer was cut short
    deadline = time.monotonic() + 5
    while '"error":"client_timeout"' not in gateway.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in gateway.log().splitlines() if '"error":"client_timeout"' in line)
    assert '"route":"/api/v2/products/"' in line
