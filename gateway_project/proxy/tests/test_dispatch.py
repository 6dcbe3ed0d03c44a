"""The ASGI dispatch (proxy/edge.py): forwarded API paths go to the edge's proxy application on the event
loop, everything else to Django's full handler on threads, and both give the same answer to an API
request."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import pytest
from a2wsgi import WSGIMiddleware
from django.core.handlers.wsgi import WSGIHandler
from django.urls import resolve
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from common.tracing import REQUEST_ID_ATTRIBUTE
from proxy import edge, upstream, views
from proxy.routes import ROUTES
from proxy.tests.asgi import Answer, call, call_together
from proxy.tests.upstream_stub import StubUpstream

ORIGIN = "https://shop.example"
REQUEST_ID = "dispatch-test-0001"


class Recorded:
    """An ASGI app that notes it was called, then hands over to the real one."""

    def __init__(self, app: edge.ASGIApp) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def django_asgi() -> edge.ASGIApp:
    """Django's full handler as gateway/asgi.py serves it."""
    return WSGIMiddleware(edge.django_side(WSGIHandler()), workers=2)


def full_stack(method: str, path: str, **headers: str) -> Answer:
    """Only Django's full handler, for every path (as under a WSGI server)."""
    return call(django_asgi(), method, path, headers=headers)


@pytest.fixture
def apps(settings: Any) -> tuple[edge.ASGIApp, Recorded, Recorded]:
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]
    django_app, proxy_app = Recorded(django_asgi()), Recorded(edge.ProxyApp())
    return edge.edge_application(django_app, proxy_app), django_app, proxy_app


@pytest.mark.parametrize(
    "path",
    [
        *(route.prefix + "42/" for route in ROUTES if route.prefix.startswith("/api/")),
        "/api/v1/nothing-here/",
        "/api/",
        "/api/v1/me/",
    ],
)
def test_every_path_the_edge_takes_resolves_to_the_proxy_view(path: str) -> None:
    assert edge.is_proxied(path)
    assert resolve(path).func is views.proxy_view


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/me/overview",
        "/api/v1/me/overview/",  # Django sends it to the proxy view itself: the same 404 route_not_found
        "/api/docs/",
        "/api/docs/orders",
        "/api/docs/users/",
        "/api/schema/",
        "/admin/",
        "/admin/users/",
        "/static/orders/app.css",
        "/health",
        "/health/live/",
        "/metrics",
        "/config/",
        "/",
    ],
)
def test_the_gateways_own_paths_and_the_forwarded_web_pages_stay_on_django(path: str) -> None:
    assert not edge.is_proxied(path)


def test_api_requests_take_the_edge_and_the_rest_django(
    apps: tuple[edge.ASGIApp, Recorded, Recorded], orders: StubUpstream, bearer: dict[str, str]
) -> None:
    application, django_app, proxy_app = apps

    proxied = call(application, "GET", "/api/v1/orders/", headers=bearer)
    live = call(application, "GET", "/health/live/")
    login = call(application, "GET", "/admin/login/")
    docs = call(application, "GET", "/api/docs/")

    assert (proxied.status, json.loads(proxied.body)["service"]) == (200, "orders")
    assert proxied.header("X-Content-Type-Options") == "nosniff"  # Django's security middlewares still apply
    assert proxied.header("X-Frame-Options") == "DENY"
    assert proxied.header("X-Request-ID")
    assert (live.status, login.status, docs.status) == (200, 200, 200)
    assert proxy_app.paths == ["/api/v1/orders/"]
    assert django_app.paths == ["/health/live/", "/admin/login/", "/api/docs/"]


@pytest.mark.parametrize(
    ("path", "bulkhead"),
    [
        *((path, "operations") for path in ("/health", "/health/", "/health/live/", "/health/ready/", "/metrics")),
        *((path, "static") for path in ("/static/gateway/admin/css/base.css", "/static/orders/app.css")),
        *((path, "pages") for path in ("/admin/login/", "/admin/orders/", "/api/v1/me/overview", "/healthz")),
    ],
)
def test_each_path_for_django_takes_its_bulkheads_threads(path: str, bulkhead: str) -> None:
    apps = {name: Recorded(django_asgi()) for name in ("pages", "operations", "static")}
    application = edge.edge_application(
        apps["pages"],
        edge.ProxyApp(),
        bulkheads=((edge.is_operations, apps["operations"]), (edge.is_static, apps["static"])),
    )

    call(application, "GET", path)

    assert {name: app.paths for name, app in apps.items() if app.paths} == {bulkhead: [path]}


@pytest.mark.parametrize(
    ("method", "path", "with_token", "headers"),
    [
        ("GET", "/api/v1/orders/", True, {}),
        ("GET", "/api/v1/orders/", False, {}),  # 401
        ("GET", "/api/v1/products/", False, {"Origin": ORIGIN}),  # a deprecated route, CORS
        ("DELETE", "/api/v1/payments/1/", True, {}),  # 405
        ("OPTIONS", "/api/v1/orders/", False, {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}),
        ("GET", "/api/v1/users/%2e%2e/admin/", False, {}),  # path hygiene
        ("GET", "/api/v9/unknown/", False, {}),  # no route
    ],
)
def test_the_edge_answers_exactly_as_the_full_django_stack(
    settings: Any,
    orders: StubUpstream,
    bearer: dict[str, str],
    method: str,
    path: str,
    with_token: bool,
    headers: dict[str, str],
) -> None:
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]
    headers = {"X-Request-ID": REQUEST_ID, **headers, **(bearer if with_token else {})}

    full = full_stack(method, path, **headers)
    lean = call(edge.ProxyApp(), method, path, headers=headers)

    def comparable(answer: Answer) -> tuple[int, dict[str, str], bytes]:
        # the second request was counted once more against the same quota; the edge gives its own small
        # answers a Content-Length (else the server would chunk them)
        ignored = ("ratelimit", "content-length")
        kept = {name.lower(): value for name, value in answer.header_list if name.lower() not in ignored}
        return answer.status, kept, answer.body

    assert comparable(lean) == comparable(full)
    assert lean.header("X-Request-ID") == REQUEST_ID


def test_an_unexpected_exception_on_the_edge_is_a_json_500_with_the_request_id(
    apps: tuple[edge.ASGIApp, Recorded, Recorded],
    orders: StubUpstream,
    bearer: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(**kwargs: Any) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(views, "mint_assertion", broken)  # a fault injected in the middle of the proxy view
    application, _, proxy_app = apps

    answer = call(application, "GET", "/api/v1/orders/", headers={**bearer, "X-Request-ID": REQUEST_ID})

    assert proxy_app.paths == ["/api/v1/orders/"]
    assert answer.status == 500
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("X-Request-ID") == REQUEST_ID
    assert json.loads(answer.body)["error"]["code"] == "internal_error"
    assert b"RuntimeError" not in answer.body
    assert b"Traceback" not in answer.body
    assert orders.received == []


def test_a_disallowed_host_on_the_edge_is_a_json_400_with_the_rate_limit_headers(
    apps: tuple[edge.ASGIApp, Recorded, Recorded], orders: StubUpstream, bearer: dict[str, str]
) -> None:
    application, _, _ = apps

    answer = call(application, "GET", "/api/v1/orders/", headers={**bearer, "Host": "evil.example"})

    assert answer.status == 400
    assert json.loads(answer.body)["error"]["code"] == "invalid_host"
    assert (answer.header("RateLimit") or "").startswith('"default";')
    assert orders.received == []


def test_the_edge_makes_the_server_span_root_of_the_trace_and_the_upstream_call_its_child(
    orders: StubUpstream, bearer: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a tracer recording in memory (the processes get theirs from common.tracing.configure_tracing)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(edge, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(upstream, "_tracer", provider.get_tracer("test"))
    application = edge.edge_application(django_asgi(), edge.ProxyApp())
    client_trace = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"

    # when a client that traces calls the API
    answer = call(application, "GET", "/api/v1/orders/", headers={"traceparent": client_trace, **bearer})

    # then the gateway's server span starts a new trace, linking the client's context only
    assert answer.status == 200
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    assert len(spans) == len(exporter.get_finished_spans()) == 2
    server_span, client_span = spans[SpanKind.SERVER], spans[SpanKind.CLIENT]
    assert (server_span.name, server_span.parent) == ("GET ^api/", None)
    assert server_span.context.trace_id != int("ab" * 16, 16)
    assert [(link.context.trace_id, link.context.span_id) for link in server_span.links] == [
        (int("ab" * 16, 16), int("cd" * 8, 16))
    ]
    assert server_span.attributes[REQUEST_ID_ATTRIBUTE] == orders.received[0].headers["X-Request-ID"]
    assert server_span.attributes["http.status_code"] == 200
    # and the call to the service is its child, whose context the service receives
    assert client_span.parent is not None
    assert client_span.parent.span_id == server_span.context.span_id
    sent = orders.received[0].headers["traceparent"]
    assert sent.startswith(f"00-{server_span.context.trace_id:032x}-{client_span.context.span_id:016x}-")


def test_a_trace_the_sampler_leaves_out_records_no_span_and_tells_the_service_so(
    orders: StubUpstream, bearer: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a sampler that records no trace (production samples a share: OTEL_TRACES_SAMPLER)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(edge, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(upstream, "_tracer", provider.get_tracer("test"))

    # when
    answer = call(edge.ProxyApp(), "GET", "/api/v1/orders/", headers=bearer)

    # then nothing is recorded, and the service is told the trace is not sampled, so it records nothing
    assert answer.status == 200
    assert exporter.get_finished_spans() == ()
    version, trace_id, _, flags = orders.received[0].headers["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 0x01 == 0  # the sampled flag (0x02 is W3C's random trace id flag)
    assert int(trace_id, 16) != 0


def test_an_unexpected_exception_is_recorded_on_the_edges_server_span(
    orders: StubUpstream, bearer: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(edge, "_tracer", provider.get_tracer("test"))

    def broken(**kwargs: Any) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(views, "mint_assertion", broken)

    answer = call(edge.ProxyApp(), "GET", "/api/v1/orders/", headers=bearer)

    assert answer.status == 500
    (server_span,) = exporter.get_finished_spans()
    assert server_span.status.status_code is StatusCode.ERROR
    assert server_span.status.description == "RuntimeError: a bug"
    assert [event.attributes["exception.type"] for event in server_span.events] == ["RuntimeError"]


def test_a_body_refused_unread_on_the_edge_closes_the_connection(bearer: dict[str, str], settings: Any) -> None:
    # given a body declared over the limit: the rest of it is still on its way on the client's connection
    settings.MAX_REQUEST_BODY_BYTES = 100
    headers = {**bearer, "Content-Length": "101", "Content-Type": "application/json"}

    # when the edge runs under gunicorn, or under another server
    on_gunicorn = call(
        edge.ProxyApp(software="gunicorn/27.0.1"), "POST", "/api/v1/orders/", headers=headers, body=b"x" * 101
    )
    elsewhere = call(edge.ProxyApp(software="uvicorn"), "POST", "/api/v1/orders/", headers=headers, body=b"x" * 101)

    # then gunicorn (gunicorn.conf.py) is told to close it rather than read and discard the rest; a server
    # not known to honour the header is not given a hop-by-hop header it may refuse
    assert (on_gunicorn.status, elsewhere.status) == (413, 413)
    assert on_gunicorn.header("Connection") == "close"
    assert elsewhere.header("Connection") is None


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(
    bearer: dict[str, str], settings: Any, orders: StubUpstream
) -> None:
    settings.MAX_REQUEST_BODY_BYTES = 100
    headers = {**bearer, "Transfer-Encoding": "chunked", "Content-Type": "application/json"}

    answer = call(edge.ProxyApp(), "POST", "/api/v1/orders/", headers=headers, body=[b"x" * 60, b"x" * 60, b"x" * 60])

    assert answer.status == 413
    assert json.loads(answer.body)["error"]["details"] == {"max_bytes": 100}
    assert orders.received == []


def test_a_client_gone_mid_body_is_a_400_and_nothing_is_forwarded(bearer: dict[str, str], orders: StubUpstream) -> None:
    headers = {**bearer, "Content-Length": "50", "Content-Type": "application/json"}

    answer = call(edge.ProxyApp(), "POST", "/api/v1/orders/", headers=headers, body=b"{", disconnect_after_body=True)

    assert answer.status == 400
    assert orders.received == []


def test_a_body_within_the_limit_reaches_the_service_whole(bearer: dict[str, str], orders: StubUpstream) -> None:
    payload = json.dumps({"items": [{"product_id": 1, "quantity": 2}]}).encode()
    headers = {**bearer, "Transfer-Encoding": "chunked", "Content-Type": "application/json"}

    answer = call(edge.ProxyApp(), "POST", "/api/v1/orders/", headers=headers, body=[payload[:10], payload[10:]])

    assert answer.status in (200, 201)
    assert orders.received[0].body == payload
    assert orders.received[0].headers["Content-Length"] == str(len(payload))


class EndlessService:
    """A service whose answer does not end (a chunk every few milliseconds, as an event stream; it gives
    up after 2000, so that a gateway that waited for the end fails the test rather than hanging it): it
    notes when the gateway closes the connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.chunks_sent = 0
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            try:
                while self.chunks_sent < 2000:
                    conn.sendall(b"6\r\ndata:x\r\n")
                    self.chunks_sent += 1
                    time.sleep(0.005)
            except OSError:
                self.closed.set()


def test_a_client_gone_mid_stream_stops_the_services_answer_being_read(bearer: dict[str, str], settings: Any) -> None:
    # given a service whose answer never ends
    service = EndlessService()
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": service.url}

    # when the client goes away after a few chunks
    answer = call(edge.ProxyApp(), "GET", "/api/v1/orders/", headers=bearer, disconnect_after_chunks=3)

    # then the client had the first chunks while the service was still sending (streamed, not buffered),
    # and the gateway stops reading the answer and closes its connection to the service
    assert answer.status == 200
    assert answer.body_messages == 3
    assert answer.body
    assert answer.body == b"data:x" * (len(answer.body) // 6)
    assert service.closed.wait(5)
    assert service.chunks_sent < 200  # a second of it at most, not for ever


def test_past_its_in_flight_limit_a_worker_sheds_requests_at_once_with_503_and_retry_after(
    bearer: dict[str, str], settings: Any, orders: StubUpstream
) -> None:
    # given a worker allowed one request at a time, and a slow service
    settings.GATEWAY_MAX_IN_FLIGHT = 1
    orders.reply("/api/v1/orders/slow/", delay=0.5)
    app = edge.ProxyApp()

    # when a second request comes while the first is open
    slow, shed = call_together(app, [("GET", "/api/v1/orders/slow/", bearer), ("GET", "/api/v1/orders/other/", bearer)])

    # then the first is answered and the second refused without reaching the service
    assert slow.status == 200
    assert (shed.status, shed.header("Retry-After")) == (503, "1")
    assert json.loads(shed.body)["error"]["code"] == "gateway_busy"
    assert [request.target for request in orders.received] == ["/api/v1/orders/slow/"]
    # and once it is done, the worker takes requests again
    assert call(app, "GET", "/api/v1/orders/other/", headers=bearer).status == 200
