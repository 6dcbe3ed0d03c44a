"""The lean entry point for proxied API requests: the same proxy view, without what only the admin needs.

``gateway/wsgi.py`` sends every forwarded ``/api/`` path here and everything else (the admin, the
services' forwarded admin pages and static files, the API docs, ``/api/v1/me/overview``, the config
center, ``/metrics``, ``/health``) to Django's full handler. Why: on a 2-core machine the gateway's CPU per
request is its throughput (PERFORMANCE.md, bench/README.md), and a profile of a proxied request spent a
fifth of it in Django's handler and eleven middleware of which only a few do anything on an API path, plus
the OpenTelemetry Django middleware (≈ 250 µs: it reads dozens of request attributes and records its own
metrics). Sessions, CSRF (the proxy view is exempt), authentication, messages and WhiteNoise never touch a
proxied request: they are left out, nothing else is.

:class:`ProxyHandler` is still a Django handler (``WSGIHandler``): the same request object, signals,
error conversion (an unexpected exception is ``common.errors.handler500``'s JSON 500, a suspicious host
the JSON 400, exactly as on the full stack), response closing and logging. It differs in two ways:

- its middleware is :data:`EDGE_MIDDLEWARE`, the full list's entries that act on an API path, in the
  same order;
- it calls :func:`proxy.views.proxy_view` without resolving the URL (every path it receives resolves to
  that view on the full stack; :func:`is_proxied` keeps the gateway's own ``/api/`` views on Django).

The gateway's server span, root of every trace (``common.tracing``), is opened by
:class:`ServerSpanMiddleware` instead of the Django instrumentation: the same kind, name and link to the
client's ``traceparent``, with the few attributes worth having.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler, get_path_info
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponseBase
from django.utils.module_loading import import_string
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from common.tracing import CLIENT_CONTEXT_ENVIRON_KEY, REQUEST_ID_ATTRIBUTE, context_from
from proxy.views import proxy_view

# The gateway's own views under /api/ (gateway/urls.py lists them before the forwarded prefixes). A path
# under one of these goes to Django, which resolves it to its own view or, when none matches, to the same
# proxy view: the answer is the same either way.
GATEWAY_API_PREFIXES = ("/api/v1/me/overview", "/api/docs/", "/api/schema/")
PROXIED_PREFIX = "/api/"
# The name Django's instrumentation gives the span: the method and the matched URL pattern (gateway/urls.py
# routes every forwarded /api/ path with the pattern "^api/").
SPAN_ROUTE = "^api/"
_tracer = trace.get_tracer(__name__)  # resolves to the provider common.tracing installs, whenever it does

# settings.MIDDLEWARE minus what never acts on a proxied API path: the admins' sign-in throttle (admin paths
# only), WhiteNoise (static files only), sessions, CSRF (the proxy view is csrf_exempt), authentication and
# messages (the proxy never reads request.user, the session or messages, so they would add nothing to the
# answer). Same order as the full list.
EDGE_MIDDLEWARE = (
    "proxy.edge.ServerSpanMiddleware",
    "common.request_id.RequestIdMiddleware",
    "proxy.observability.AccessLogMiddleware",
    "proxy.middleware.PathHygieneMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
)


def is_proxied(path_info: str) -> bool:
    """Whether the lean handler answers this (decoded) path: every /api/ path but the gateway's own."""
    return path_info.startswith(PROXIED_PREFIX) and not path_info.startswith(GATEWAY_API_PREFIXES)


class ServerSpanMiddleware:
    """The gateway's SERVER span, a new trace's root, current while the request is handled (error bodies
    name its trace, the upstream call is its child). The client's own context, moved aside by
    ``common.tracing.untrusted_trace_context``, is only linked. Without a tracer provider (tests, tracing
    off) the span is a no-op one."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        environ = request.META
        carrier = environ.get(CLIENT_CONTEXT_ENVIRON_KEY)
        remote = context_from(carrier) if carrier else None
        links = (
            [trace.Link(trace.get_current_span(remote).get_span_context(), {"shop.link": "client_traceparent"})]
            if remote is not None
            else None
        )
        method = request.method or "GET"
        span = _tracer.start_span(
            f"{method} {SPAN_ROUTE}",
            context=otel_context.Context(),  # a root: nothing the client sent is a parent
            kind=SpanKind.SERVER,
            links=links,
            attributes={
                "http.method": method,
                "http.route": SPAN_ROUTE,
                "http.scheme": request.scheme,
                "http.flavor": environ.get("SERVER_PROTOCOL", "").partition("/")[2],
                "net.peer.ip": environ.get("REMOTE_ADDR", ""),
            },
        )
        # attach/detach rather than trace.use_span: the same, without two context managers per request.
        token = otel_context.attach(trace.set_span_in_context(span))
        request.gateway_server_span = span  # type: ignore[attr-defined]  # for _record_exception
        try:
            response = self.get_response(request)
            if span.is_recording():
                span.set_attribute("http.status_code", response.status_code)
                request_id = getattr(request, "request_id", None)
                if request_id:
                    span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
                if response.status_code >= 500 and span.status.status_code is StatusCode.UNSET:
                    span.set_status(Status(StatusCode.ERROR))
            return response
        except BaseException as exc:  # the layers inside turn exceptions into responses; this is a backstop
            if span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            otel_context.detach(token)
            span.end()


def _record_exception(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """The exception a layer inside turned into a 500, recorded on the lean path's server span (Django
    sends got_request_exception while it is being handled, so sys.exc_info() still holds it)."""
    span = getattr(request, "gateway_server_span", None)
    exc = sys.exc_info()[1]
    if span is not None and exc is not None and span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


got_request_exception.connect(_record_exception, dispatch_uid="proxy.edge.record_exception")


class ProxyHandler(WSGIHandler):
    """Django's WSGI handler with :data:`EDGE_MIDDLEWARE` around :func:`proxy.views.proxy_view`."""

    def load_middleware(self, is_async: bool = False) -> None:
        if is_async:
            raise ImproperlyConfigured("The proxy handler is synchronous (gunicorn gthread).")
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        # Each layer converts an exception into the response Django's handlers give it (JSON 500, JSON 400
        # for a disallowed host, ...), so the layers outside still see a response, as on the full stack.
        handler = convert_exception_to_response(self._get_response)
        for path in reversed(EDGE_MIDDLEWARE):
            handler = convert_exception_to_response(import_string(path)(handler))
        self._middleware_chain = handler

    def _get_response(self, request: HttpRequest) -> HttpResponseBase:
        # No URL resolution: every path this handler is given resolves to the proxy view (see is_proxied).
        return proxy_view(request)


def edge_application(django_app: Callable[..., Any], proxy_app: Callable[..., Any]) -> Callable[..., Any]:
    """The gateway's WSGI application: proxied API paths to ``proxy_app``, the rest to ``django_app``."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        # The same decoded path Django's URL resolver and the proxy view read (request.path_info).
        if is_proxied(get_path_info(environ) or "/"):
            return proxy_app(environ, start_response)
        return django_app(environ, start_response)

    return application
