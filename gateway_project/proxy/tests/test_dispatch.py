"""The WSGI dispatch (proxy/edge.py): forwarded API paths go to the lean proxy handler, everything else to
Django's full handler, and both give the same answer to an API request."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.handlers import SimpleHandler

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import RequestFactory
from django.urls import resolve
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from common.tracing import REQUEST_ID_ATTRIBUTE, untrusted_trace_context
from proxy import edge, upstream, views
from proxy.routes import ROUTES
from proxy.tests.upstream_stub import StubUpstream

ORIGIN = "https://shop.example"
REQUEST_ID = "dispatch-test-0001"


class Recorded:
    """A WSGI app that notes it was called, then hands over to the real one."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        self.paths.append(environ["PATH_INFO"])
        return self.app(environ, start_response)


def call(app: Callable[..., Any], method: str, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """One request through a WSGI app, as a server would make it: start_response, iterate, close."""
    environ = RequestFactory().generic(method, path, headers=headers).environ
    started: list[Any] = []

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started.append((int(status.split()[0]), dict(response_headers)))

    with database_connection_kept():
        body: Iterable[bytes] = app(environ, start_response)
        try:
            content = b"".join(body)
        finally:
            getattr(body, "close", lambda: None)()
    status, response_headers = started[0]
    return status, response_headers, content


@contextlib.contextmanager
def database_connection_kept() -> Iterator[None]:
    """As Django's test client does: the handlers' signals must not close the test's database connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def apps(settings: Any) -> tuple[Callable[..., Any], Recorded, Recorded]:
    settings.CORS_ALLOWED_ORIGINS = [ORIGIN]
    django_app, proxy_app = Recorded(WSGIHandler()), Recorded(edge.ProxyHandler())
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
def test_every_path_the_lean_handler_takes_resolves_to_the_proxy_view(path: str) -> None:
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


def test_api_requests_take_the_lean_handler_and_the_rest_django(
    apps: tuple[Callable[..., Any], Recorded, Recorded], orders: StubUpstream, bearer: dict[str, str]
) -> None:
    application, django_app, proxy_app = apps

    proxied, headers, body = call(application, "GET", "/api/v1/orders/", **bearer)
    live, _, _ = call(application, "GET", "/health/live/")
    login, _, _ = call(application, "GET", "/admin/login/")
    docs, _, _ = call(application, "GET", "/api/docs/")

    assert (proxied, json.loads(body)["service"]) == (200, "orders")
    assert headers["X-Content-Type-Options"] == "nosniff"  # Django's security middlewares still apply
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Request-ID"]
    assert (live, login, docs) == (200, 200, 200)
    assert proxy_app.paths == ["/api/v1/orders/"]
    assert django_app.paths == ["/health/live/", "/admin/login/", "/api/docs/"]


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
def test_the_lean_handler_answers_exactly_as_the_full_django_stack(
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

    full = call(WSGIHandler(), method, path, **headers)
    lean = call(edge.ProxyHandler(), method, path, **headers)

    def comparable(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, dict[str, str], bytes]:
        status, response_headers, body = answer
        # the second request was counted once more against the same quota
        return status, {name: value for name, value in response_headers.items() if name != "RateLimit"}, body

    assert comparable(lean) == comparable(full)
    assert lean[1]["X-Request-ID"] == REQUEST_ID


def test_an_unexpected_exception_on_the_lean_path_is_a_json_500_with_the_request_id(
    apps: tuple[Callable[..., Any], Recorded, Recorded],
    orders: StubUpstream,
    bearer: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(**kwargs: Any) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(views, "mint_assertion", broken)  # a fault injected in the middle of the proxy view
    application, _, proxy_app = apps

    status, headers, body = call(application, "GET", "/api/v1/orders/", **{**bearer, "X-Request-ID": REQUEST_ID})

    assert proxy_app.paths == ["/api/v1/orders/"]
    assert status == 500
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Request-ID"] == REQUEST_ID
    assert json.loads(body)["error"]["code"] == "internal_error"
    assert b"RuntimeError" not in body
    assert b"Traceback" not in body
    assert orders.received == []


def test_a_disallowed_host_on_the_lean_path_is_a_json_400_with_the_rate_limit_headers(
    apps: tuple[Callable[..., Any], Recorded, Recorded], orders: StubUpstream, bearer: dict[str, str]
) -> None:
    application, _, _ = apps

    status, headers, body = call(application, "GET", "/api/v1/orders/", **{**bearer, "Host": "evil.example"})

    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_host"
    assert headers["RateLimit"].startswith('"default";')
    assert orders.received == []


def test_the_lean_path_makes_the_server_span_root_of_the_trace_and_the_upstream_call_its_child(
    orders: StubUpstream, bearer: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a tracer recording in memory (the processes get theirs from common.tracing.configure_tracing)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(edge, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(upstream, "_tracer", provider.get_tracer("test"))
    application = untrusted_trace_context(edge.ProxyHandler())
    client_trace = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"

    # when a client that traces calls the API
    status, _, _ = call(application, "GET", "/api/v1/orders/", traceparent=client_trace, **bearer)

    # then the gateway's server span starts a new trace, linking the client's context only
    assert status == 200
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


def test_an_unexpected_exception_is_recorded_on_the_lean_paths_server_span(
    orders: StubUpstream, bearer: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(edge, "_tracer", provider.get_tracer("test"))

    def broken(**kwargs: Any) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(views, "mint_assertion", broken)

    status, _, _ = call(untrusted_trace_context(edge.ProxyHandler()), "GET", "/api/v1/orders/", **bearer)

    assert status == 500
    (server_span,) = exporter.get_finished_spans()
    assert server_span.status.status_code is StatusCode.ERROR
    assert server_span.status.description == "RuntimeError: a bug"
    assert [event.attributes["exception.type"] for event in server_span.events] == ["RuntimeError"]


def test_under_a_server_other_than_gunicorn_a_refused_body_is_answered_without_a_hop_by_hop_header(
    bearer: dict[str, str], settings: Any
) -> None:
    # given the lean handler run by wsgiref, as runserver runs it (wsgiref asserts that an application sets
    # no hop-by-hop header, which would make the answer a 500), and a body declared over the limit
    settings.MAX_REQUEST_BODY_BYTES = 100
    environ = RequestFactory().generic("POST", "/api/v1/orders/", headers=bearer).environ
    environ.update(CONTENT_LENGTH="101", CONTENT_TYPE="application/json", SERVER_SOFTWARE="WSGIServer/0.2")
    output = io.BytesIO()
    errors = io.StringIO()
    server = SimpleHandler(io.BytesIO(), output, errors, environ)

    # when
    with database_connection_kept():
        server.run(edge.ProxyHandler())

    # then
    status_line, _, rest = output.getvalue().partition(b"\r\n")
    assert status_line.split()[1] == b"413", errors.getvalue()
    assert b"Connection" not in rest.partition(b"\r\n\r\n")[0]
