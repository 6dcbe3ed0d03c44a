"""Protocol hygiene, CORS, version headers, the access log and /metrics, against the gateway under a real
gunicorn with two workers (so the metrics are summed across processes), spoken to with raw HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from proxy.tests.test_gunicorn import PROJECT_DIR, Gateway, received_by_any
from proxy.tests.upstream_stub import JWKS_PATH, StubUpstream

ORIGIN = "https://shop.example"
BODY_LIMIT = 50_000  # the default; the auth routes set 16 KiB


class EdgeGateway(Gateway):
    def __init__(self, port: int, log_path: Path, process: subprocess.Popen[bytes], var_dir: Path) -> None:
        super().__init__(port, log_path)
        self.process = process
        self.var_dir = var_dir

    def send_raw(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        import http.client

        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(raw)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status, dict(response.headers), response.read()

    def metrics(self) -> str:
        status, _, body = self.request("GET", "/metrics")
        assert status == 200, body
        return body.decode()

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]


@pytest.fixture(scope="module")
def edge(stubs: dict[str, StubUpstream], tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeGateway]:
    var_dir = tmp_path_factory.mktemp("edge-var")
    # left by a gateway that died without cleaning up: removed when the next one starts
    (var_dir / "metrics" / "gateway-99999999").mkdir(parents=True)
    log_path = var_dir / "gunicorn.log"
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
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
        CORS_ALLOWED_ORIGINS=ORIGIN,
        RATE_LIMIT_DEFAULT="100000/minute",
        UPSTREAM_CHECK_INTERVAL="0",
        LOG_LEVEL="INFO",
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    command = [
        sys.executable, "-m", "gunicorn", "gateway.asgi:application",
        "--bind", f"fd://{listener.fileno()}",
        "--worker-class", "asgi", "--workers", "2",
        "--graceful-timeout", "2",
        "--no-control-socket",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 (our own command line)
            command, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()]
        )
    server = EdgeGateway(listener.getsockname()[1], log_path, process, var_dir)
    try:
        status, _, _ = server.request("GET", "/api/v1/nothing/", timeout=60)
        assert status == 404, server.log()
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        listener.close()


def raw_request(lines: list[str], body: bytes = b"") -> bytes:
    return ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode("latin-1") + body


# Headers gunicorn's parser refuses, answered with the JSON envelope (gunicorn.conf.py)


@pytest.mark.parametrize("name", ["X_User_Id", "X-Service_Assertion", "Authorization_", "X_Forwarded_For"])
def test_a_header_name_with_an_underscore_is_refused_not_mapped(
    edge: EdgeGateway, stubs: dict[str, StubUpstream], name: str
) -> None:
    status, headers, body = edge.request("GET", "/api/v1/products/", headers={name: "1"})

    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "invalid_header_name"
    assert headers["X-Request-ID"]
    assert received_by_any(stubs) == []


@pytest.mark.parametrize(
    "framing",
    [
        ["Content-Length: 2", "Content-Length: 2"],
        ["Content-Length: 2", "Content-Length: 3"],
        ["Content-Length: 2, 2"],
        ["Content-Length: 2", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: chunked", "Content-Length: 2"],
    ],
    ids=["duplicate", "conflicting", "listed", "length-then-chunked", "chunked-then-length"],
)
def test_ambiguous_body_framing_is_refused(
    edge: EdgeGateway, stubs: dict[str, StubUpstream], framing: list[str]
) -> None:
    raw = raw_request(["POST /api/v1/users/ HTTP/1.1", "Host: gateway", *framing], b"{}")

    status, _headers, body = edge.send_raw(raw)

    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_header"
    assert received_by_any(stubs) == []


def test_a_single_oversized_header_line_is_431_json(edge: EdgeGateway, stubs: dict[str, StubUpstream]) -> None:
    status, _, body = edge.request("GET", "/api/v1/products/", headers={"X-Big": "x" * 9000})

    assert status == 431
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert received_by_any(stubs) == []


# Per-route limits (proxy/routes.py: the auth routes take 8 KiB of headers and 16 KiB of body)


def test_headers_over_the_route_limit_are_431(edge: EdgeGateway, stubs: dict[str, StubUpstream]) -> None:
    headers = {f"X-Filler-{index}": "y" * 3000 for index in range(3)}  # ~9 KiB in lines gunicorn accepts

    status, _, body = edge.request("POST", "/api/v1/auth/token", headers={**headers, "Content-Length": "0"})
    elsewhere, _, _ = edge.request("GET", "/api/v1/products/", headers=headers)

    assert status == 431
    error = json.loads(body)["error"]
    assert len(error.pop("trace_id")) == 32  # every error names its trace and request (common.errors)
    assert error.pop("request_id")
    assert error == {
        "code": "headers_too_large",
        "message": "The request headers are too large.",
        "details": {"max_bytes": 8192},
    }
    assert elsewhere == 200
    assert [request.target for request in received_by_any(stubs)] == ["/api/v1/products/"]


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_body_over_the_route_limit_is_413_while_other_routes_take_it(
    edge: EdgeGateway, stubs: dict[str, StubUpstream], chunked: bool
) -> None:
    payload = b"x" * 20_000  # over the auth routes' 16 KiB, under the default limit
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(len(payload))}
    body = f"{len(payload):x}\r\n".encode() + payload + b"\r\n0\r\n\r\n" if chunked else payload
    json_type = {"Content-Type": "application/json"}

    status, _, response_body = edge.request("POST", "/api/v1/auth/token", headers={**json_type, **framing}, body=body)
    other, _, _ = edge.request("POST", "/api/v1/users/", headers={**json_type, **framing}, body=body)

    assert status == 413
    assert json.loads(response_body)["error"]["details"] == {"max_bytes": 16 * 1024}
    assert other == 200
    assert [len(request.body) for request in received_by_any(stubs)] == [len(payload)]


def test_client_identity_and_internal_headers_never_reach_a_service(edge: EdgeGateway, orders: StubUpstream) -> None:
    forged = {
        "X-User-Id": "1",
        "X-User-Staff": "true",
        "X-Service-Assertion": "forged",
        "X-Internal-Secret": "1",
        "X-Real-IP": "10.9.9.9",
        "Forwarded": "for=10.9.9.9",
        "X-Forwarded-For": "10.9.9.9",
        "Connection": "close, X-Custom",
        "X-Custom": "hop",
        "Proxy": "http://evil",
    }

    status, _, _ = edge.request("GET", "/api/v1/products/", headers=forged)

    assert status == 200
    received = orders.received[0].headers
    for name in ("X-User-Id", "X-User-Staff", "X-Internal-Secret", "X-Real-IP", "Forwarded", "X-Custom", "Proxy"):
        assert name not in received
    assert received["X-Forwarded-For"] == "127.0.0.1"
    assert received["X-Service-Assertion"] != "forged"


# CORS (django-cors-headers, for the configured origins, on /api/ only)


def test_a_preflight_from_an_allowed_origin_is_answered_by_the_gateway(
    edge: EdgeGateway, stubs: dict[str, StubUpstream]
) -> None:
    status, headers, _ = edge.request(
        "OPTIONS",
        "/api/v1/orders/",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )

    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert {"authorization", "content-type", "idempotency-key"} <= {
        name.strip() for name in headers["Access-Control-Allow-Headers"].split(",")
    }
    assert "Access-Control-Allow-Credentials" not in headers
    assert received_by_any(stubs) == []


def test_a_preflight_from_another_origin_gets_no_permission(edge: EdgeGateway) -> None:
    _, headers, _ = edge.request(
        "OPTIONS",
        "/api/v1/orders/",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )

    assert "Access-Control-Allow-Origin" not in headers


def test_an_api_answer_to_an_allowed_origin_carries_cors_headers(edge: EdgeGateway, orders: StubUpstream) -> None:
    orders.reply("/api/v1/products/", headers=[("Access-Control-Allow-Origin", "*")])  # the gateway decides

    status, headers, _ = edge.request("GET", "/api/v1/products/", headers={"Origin": ORIGIN})
    _, other_origin, _ = edge.request("GET", "/api/v1/products/", headers={"Origin": "https://evil.example"})
    _, admin, _ = edge.request("GET", "/admin/login/", headers={"Origin": ORIGIN})

    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "x-request-id" in headers["Access-Control-Expose-Headers"]
    assert "origin" in headers["Vary"].lower()
    assert "Access-Control-Allow-Origin" not in other_origin
    assert "Access-Control-Allow-Origin" not in admin


# Versions


def test_a_deprecated_route_says_so_and_names_its_successor(edge: EdgeGateway, orders: StubUpstream) -> None:
    orders.reply("/api/v1/products/", headers=[("Link", '</api/v1/products/?page=2>; rel="next"')])

    _, v1, _ = edge.request("GET", "/api/v1/products/")
    _, v2, _ = edge.request("GET", "/api/v2/products/")

    assert v1["Deprecation"] == "@1795737600"  # 2026-11-27T00:00:00Z, RFC 9745
    assert v1["Sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"  # RFC 8594
    assert v1["Link"] == '</api/v1/products/?page=2>; rel="next", </api/v2/products/>; rel="successor-version"'
    assert "Deprecation" not in v2
    assert "Sunset" not in v2
    assert [request.target for request in orders.received] == ["/api/v1/products/", "/api/v2/products/"]


# Access log


def test_every_request_is_one_json_access_line_without_secrets(
    edge: EdgeGateway, orders: StubUpstream, make_token: Callable[..., str]
) -> None:
    token = make_token(sub="42")
    orders.reply("/api/v1/orders/", body=b"x" * 200_000, headers=[("Content-Type", "text/plain")])

    status, _, body = edge.request(
        "GET",
        "/api/v1/orders/9/?password=hunter2",
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": "edge-log-0001"},
    )
    edge.request("GET", "/api/v1/users/%2e%2e/admin/", headers={"X-Request-ID": "edge-log-0002"})
    edge.request("GET", "/health", headers={"X-Request-ID": "edge-log-0003"})

    assert status == 200
    [line] = edge.access_log_lines("edge-log-0001")
    entry = json.loads(line)
    assert entry["request_id"] == "edge-log-0001"
    assert (entry["service"], entry["logger"], entry["level"]) == ("gateway", "gateway.access", "INFO")
    assert (entry["method"], entry["route"], entry["upstream_service"], entry["upstream"]) == (
        "GET",
        "/api/v1/orders/",
        "orders",
        orders.url,
    )
    assert (entry["status"], entry["user_id"], entry["client"], entry["bytes"]) == (200, 42, "127.0.0.1", len(body))
    assert entry["duration_ms"] > 0
    log = edge.log()
    assert token not in log
    assert "hunter2" not in log
    assert "/9/" not in line
    [refused] = edge.access_log_lines("edge-log-0002")
    assert json.loads(refused) | {"time": None, "duration_ms": None, "client": None, "trace_id": None} == {
        "time": None,
        "service": "gateway",
        "level": "INFO",
        "logger": "gateway.access",
        "message": "GET unmatched 400",
        "request_id": "edge-log-0002",
        "trace_id": None,
        "method": "GET",
        "route": "unmatched",
        "upstream_service": None,
        "upstream": None,
        "status": 400,
        "duration_ms": None,
        "user_id": None,
        "client": None,
        "bytes": len(
            b'{"error": {"code": "invalid_path", "message": "The request path is not acceptable.", "details": {}, '
            b'"request_id": "edge-log-0002", "trace_id": "' + json.loads(refused)["trace_id"].encode() + b'"}}'
        ),
        "error": "invalid_path",
    }
    assert "%2e" not in refused
    [health] = edge.access_log_lines("edge-log-0003")
    assert json.loads(health)["route"] == "/health"


# /metrics


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample, 0 when absent."""
    for line in metrics.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return 0.0


def test_metrics_count_requests_across_workers(edge: EdgeGateway, payments: StubUpstream) -> None:
    before = edge.metrics()
    payments.reply("/api/v1/payments/1/", status=429)
    labels = {"method": "GET", "route": "/api/v1/products/", "status": "200"}

    for _ in range(20):  # one connection each: both workers take some
        assert edge.request("GET", "/api/v1/products/")[0] == 200
    edge.request("GET", "/api/v1/payments/1/", headers={"Authorization": "Bearer nope"})

    after = edge.metrics()
    assert sample(after, "gateway_requests_total", **labels) - sample(before, "gateway_requests_total", **labels) == 20
    latency = {"route": "/api/v1/products/"}
    assert sample(after, "gateway_request_duration_seconds_count", **latency) >= 20
    assert sample(after, "gateway_request_duration_seconds_bucket", le="+Inf", **latency) >= 20
    assert sample(after, "gateway_requests_total", method="GET", route="/api/v1/payments/", status="401") >= 1
    assert sample(after, "gateway_breaker_state", service="orders", state="closed") == 1
    assert sample(after, "gateway_breaker_state", service="orders", state="open") == 0


def test_a_dead_workers_counts_are_kept_and_a_stale_directory_is_removed(edge: EdgeGateway) -> None:
    labels = {"method": "GET", "route": "/api/v1/products/", "status": "200"}
    for _ in range(6):
        edge.request("GET", "/api/v1/products/")
    before = sample(edge.metrics(), "gateway_requests_total", **labels)
    workers = edge.workers()

    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while (len(edge.workers()) < 2 or workers[0] in edge.workers()) and time.monotonic() < deadline:
        time.sleep(0.1)

    assert sample(edge.metrics(), "gateway_requests_total", **labels) >= before
    directories = [path.name for path in (edge.var_dir / "metrics").iterdir()]
    assert directories == [f"gateway-{edge.process.pid}"]


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_metrics_through_a_proxy_are_not_found(edge: EdgeGateway, header: str) -> None:
    status, _, body = edge.request("GET", "/metrics", headers={header: "127.0.0.1"})

    assert status == 404
    assert json.loads(body)["error"]["code"] == "not_found"
