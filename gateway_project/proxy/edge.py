"""The gateway's ASGI application: every forwarded ``/api/`` path on the worker's event loop, the rest on
Django's threads.

Why: on a 2-core machine the gateway's CPU per request is its throughput (PERFORMANCE.md,
bench/README.md). Under gunicorn's gthread worker a forwarder with no feature at all already cost as much
CPU per request as the whole Express gateway of the seed design (its threads hand every request and
response to each other and contend for the GIL), and Django's handler and middleware another fifth of
the gateway's total. gunicorn's ASGI worker serves a request with one coroutine on one thread, and the
forwarded path here skips Django's handler: :class:`ProxyApp` builds the same request object, runs the
middleware that acts on an API path and calls :func:`proxy.views.proxy_view_async`.

- :func:`edge_application` dispatches by path: :func:`is_proxied` paths to :class:`ProxyApp`; the admin,
  the services' forwarded admin pages and static files, the API docs, ``/api/v1/me/overview``, the config
  center, ``/metrics`` and ``/health`` to Django's full WSGI handler on a pool of threads (a2wsgi), as
  before, once their request body has arrived whole (:func:`_with_whole_body`: a slow one waits on the
  loop, not on a thread). Both see the same WSGI environ gunicorn's WSGI worker made: ``RAW_URI`` (the
  target as sent, for the path hygiene), a ``PATH_INFO`` decoded the same way, ``SERVER_SOFTWARE``.
- :class:`ProxyApp` per request: the server span (a new trace's root, the client's ``traceparent`` only
  linked), the request id, then the layers :data:`EDGE_LAYERS` (path hygiene, CORS, the security and
  clickjacking headers) around the proxy view, each converting an exception into the response Django's
  handler would give (``common.errors.handler500``'s JSON 500); it streams the answer to the client and
  writes the access-log line and metrics once the last byte is out. Both sides give up on a client that
  takes nothing of its answer for ``GATEWAY_SEND_TIMEOUT`` (:func:`_send_in_time`).

What may block runs off the loop: a token not verified recently is checked on a thread (its key set may
have to be fetched), and Django's own pages run on theirs. The rate limit's Redis increment is awaited
over the loop's own connections (a slow Redis delays each request, not the worker), within
``RATE_LIMIT_STORE_TIMEOUT``. Two calls stay on the loop, each bounded: embedded mode's SQLite increment (a
local file, microseconds unless another worker holds its lock) and, on a breaker's state change only, its
write to the shared state (0.25 s at most; while the store is down, once per retry interval). A thread hop
per request would cost more than either (≈ 50-100 µs of CPU).
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from a2wsgi.wsgi import build_environ
from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIRequest
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.encoding import repercent_broken_unicode
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from common.errors import ApplicationError
from common.request_id import HEADER as REQUEST_ID_HEADER
from common.request_id import accept_or_generate, reset_request_id, set_request_id
from common.tracing import CLIENT_CONTEXT_ENVIRON_KEY, REQUEST_ID_ATTRIBUTE, context_from
from proxy.middleware import BODY_REFUSAL_ENVIRON_KEY, path_refusal
from proxy.observability import error_code_of, log_and_count
from proxy.views import ProxiedResponse, body_length, proxy_view_async, receive_whole_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[HttpRequest], Awaitable[HttpResponseBase]]

# The gateway's own views under /api/ (gateway/urls.py lists them before the forwarded prefixes). A path
# under one of these goes to Django, which resolves it to its own view or, when none matches, to the same
# proxy view: the answer is the same either way.
GATEWAY_API_PREFIXES = ("/api/v1/me/overview", "/api/docs/", "/api/schema/")
PROXIED_PREFIX = "/api/"
# The name Django's instrumentation gives the span: the method and the matched URL pattern (gateway/urls.py
# routes every forwarded /api/ path with the pattern "^api/").
SPAN_ROUTE = "^api/"
# Where the client's W3C trace headers are kept once moved aside (scope key; environ key for Django).
CLIENT_TRACE_SCOPE_KEY = "shop.client_trace_headers"
# Where a request for Django's side whose body could not be read whole keeps that refusal (scope key).
BODY_REFUSAL_SCOPE_KEY = "shop.body_refusal"
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})
_tracer = trace.get_tracer(__name__)  # resolves to the provider common.tracing installs, whenever it does


def is_proxied(path_info: str) -> bool:
    """Whether :class:`ProxyApp` answers this (decoded) path: every /api/ path but the gateway's own."""
    return path_info.startswith(PROXIED_PREFIX) and not path_info.startswith(GATEWAY_API_PREFIXES)


def server_software() -> str:
    """What gunicorn's WSGI worker put in ``SERVER_SOFTWARE``: the proxy view closes the connection on a
    body it refused unread only on a server known to honour ``Connection: close`` (gunicorn.conf.py)."""
    gunicorn = sys.modules.get("gunicorn")
    return f"gunicorn/{gunicorn.__version__}" if gunicorn is not None else "asgi"


def wsgi_path(scope: Scope) -> str:
    """``PATH_INFO`` as gunicorn's WSGI worker made it: the raw path percent-decoded, as Latin-1."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    return unquote_to_bytes(raw_path.decode("latin-1")).decode("latin-1")


def environ_from(scope: Scope, *, body: Any, software: str) -> dict[str, Any]:
    """The WSGI environ gunicorn's WSGI worker built for this request: a2wsgi's (headers as ``HTTP_*``,
    repeated ones joined with commas), with what gunicorn's added (:func:`as_gunicorn_gave_it`)."""
    return as_gunicorn_gave_it(build_environ(scope, body), scope, software)  # type: ignore[arg-type]


def as_gunicorn_gave_it(environ: dict[str, Any], scope: Scope, software: str) -> dict[str, Any]:
    """``environ`` with what gunicorn's WSGI worker gave the gateway and ASGI has no place for: the target
    as sent (``RAW_URI``, for the path hygiene), ``PATH_INFO`` decoded as gunicorn decoded it, the server's
    name, an input that ends where the body ends, and the client's trace headers moved aside."""
    environ.update(
        {
            "PATH_INFO": scope.get("shop.wsgi_path") or wsgi_path(scope),
            "RAW_URI": raw_uri(scope),
            "SERVER_SOFTWARE": software,
            "wsgi.input_terminated": True,
        }
    )
    carrier = scope.get(CLIENT_TRACE_SCOPE_KEY)
    if carrier:
        environ[CLIENT_CONTEXT_ENVIRON_KEY] = carrier
    refusal = scope.get(BODY_REFUSAL_SCOPE_KEY)
    if refusal is not None:
        environ[BODY_REFUSAL_ENVIRON_KEY] = refusal  # answered by proxy.middleware.UnreadBodyMiddleware
    return environ


def _move_client_trace_headers(scope: Scope) -> None:
    """The gateway does not trust a client's ``traceparent`` (common/tracing.py): its trace headers are
    moved aside before anything reads them, every trace starts here, and the client's context is only
    linked to the gateway's span."""
    headers = scope["headers"]
    if any(name in _TRACE_HEADERS for name, _ in headers):
        scope[CLIENT_TRACE_SCOPE_KEY] = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS
        }
        scope["headers"] = [(name, value) for name, value in headers if name not in _TRACE_HEADERS]


class _InlineHooks:
    """A Django middleware of the ``process_request``/``process_response`` kind, its hooks called inline:
    they only read the request and set headers. (Django's own async path would run each hook on a
    thread, twice per request.)"""

    def __init__(self, middleware: Any, get_response: Handler) -> None:
        self.middleware = middleware
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        if hasattr(self.middleware, "process_request"):
            response = self.middleware.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self.middleware, "process_response"):
            response = self.middleware.process_response(request, response)
        return response


class _PathHygiene:
    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return path_refusal(request) or await self.get_response(request)


def _cors(get_response: Handler) -> Any:
    from corsheaders.middleware import CorsMiddleware

    return CorsMiddleware(get_response)  # async-capable itself


def _security(get_response: Handler) -> Any:
    return _InlineHooks(SecurityMiddleware(get_response), get_response)


def _clickjacking(get_response: Handler) -> Any:
    return _InlineHooks(XFrameOptionsMiddleware(get_response), get_response)


# settings.MIDDLEWARE's entries that act on an API path, in the same order (the request id, access log and
# server span are the application's own steps, around these): sessions, CSRF (the proxy is csrf_exempt),
# authentication and messages never touch a proxied request, WhiteNoise and the admins' sign-in throttle
# act on other paths.
EDGE_LAYERS: tuple[Callable[[Handler], Any], ...] = (_PathHygiene, _cors, _security, _clickjacking)


class ProxyApp:
    """The ASGI application of the forwarded ``/api/`` paths. ``software``: the server's name as WSGI's
    ``SERVER_SOFTWARE`` gives it (by default, gunicorn's when gunicorn runs this process)."""

    def __init__(self, *, software: str | None = None) -> None:
        self.software = software or server_software()
        self.in_flight = 0  # requests this application is answering (one event loop: no lock)
        handler: Handler = convert_exception_to_response(self._proxy)
        for layer in reversed(EDGE_LAYERS):
            wrapped = layer(handler)
            assert iscoroutinefunction(wrapped), wrapped
            handler = convert_exception_to_response(wrapped)
        self._handle = handler

    async def _proxy(self, request: HttpRequest) -> HttpResponseBase:
        busy = self.in_flight > settings.GATEWAY_MAX_IN_FLIGHT
        return await proxy_view_async(request, request.asgi_receive, busy=busy)  # type: ignore[attr-defined]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.in_flight += 1
        try:
            await self._answer(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        environ = environ_from(scope, body=_NO_INPUT, software=self.software)
        request = WSGIRequest(environ)
        request.asgi_receive = receive  # type: ignore[attr-defined]
        request_id = accept_or_generate(environ.get("HTTP_X_REQUEST_ID"))
        request.request_id = request_id  # type: ignore[attr-defined]
        span = _start_server_span(request, environ)
        span_token = otel_context.attach(trace.set_span_in_context(span))
        id_token = set_request_id(request_id)
        # The span and the request id stay current until the access line is written, after the last byte:
        # the line names its trace, and the span lasts as long as the answer did.
        try:
            try:
                response = await self._handle(request)
            except BaseException as exc:  # the layers turn exceptions into responses; this is a backstop
                if span.is_recording():
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            response[REQUEST_ID_HEADER] = request_id
            if span.is_recording():
                span.set_attribute("http.status_code", response.status_code)
                span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
                if response.status_code >= 500 and span.status.status_code is StatusCode.UNSET:
                    span.set_status(Status(StatusCode.ERROR))
            error_code = error_code_of(response)
            sent = 0
            try:
                sent = await _send_response(response, send, receive)
            except ClientStalled as stalled:
                # Returning mid-answer makes the server close the connection: the client cannot take it as whole.
                sent, error_code = stalled.sent, ClientStalled.code
            finally:
                if isinstance(response, ProxiedResponse):
                    response.body_stream.close()  # the upstream connection back to the pool, or closed
                log_and_count(request, response, request_id, error_code, time.perf_counter() - started, sent)
        finally:
            reset_request_id(id_token)
            otel_context.detach(span_token)
            span.end()


class _NoInput(io.RawIOBase):
    """The WSGI input of a request on the edge: its body is read from the ASGI ``receive`` instead."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return 0


_NO_INPUT = _NoInput()


def _start_server_span(request: HttpRequest, environ: dict[str, Any]) -> trace.Span:
    """The gateway's SERVER span, a new trace's root: the client's own context is only linked. Without a
    tracer provider (tests, tracing off) the span is a no-op one."""
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
            "http.scheme": environ["wsgi.url_scheme"],
            "http.flavor": environ["SERVER_PROTOCOL"].partition("/")[2],
            "net.peer.ip": environ.get("REMOTE_ADDR", ""),
        },
    )
    request.gateway_server_span = span  # type: ignore[attr-defined]  # for _record_exception
    return span


def _record_exception(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """The exception a layer turned into a 500, recorded on the edge's server span (Django sends
    got_request_exception while it is being handled, so sys.exc_info() still holds it)."""
    span = getattr(request, "gateway_server_span", None)
    exc = sys.exc_info()[1]
    if span is not None and exc is not None and span.is_recording():
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


got_request_exception.connect(_record_exception, dispatch_uid="proxy.edge.record_exception")


class ClientStalled(Exception):
    """The client took nothing of its answer for ``GATEWAY_SEND_TIMEOUT`` seconds; ``sent``: the bytes of
    body it was handed before."""

    code = "client_timeout"  # the access line's and the metrics' error

    def __init__(self, sent: int = 0) -> None:
        super().__init__(sent)
        self.sent = sent


async def _send_in_time(send: Send, message: Message) -> None:
    """``send(message)``, within ``GATEWAY_SEND_TIMEOUT`` (nginx's ``send_timeout``). The server's send
    waits while the client's connection is full: a client that stops reading would otherwise hold the
    request, its connection to the service and a place among ``GATEWAY_MAX_IN_FLIGHT`` for ever."""
    try:
        async with asyncio.timeout(settings.GATEWAY_SEND_TIMEOUT):
            await send(message)
    except TimeoutError as exc:
        raise ClientStalled() from exc


async def _send_response(response: HttpResponseBase, send: Send, receive: Receive) -> int:
    """Send the response; the bytes of body sent. A proxied body streams as the service sends it, each
    chunk passed on as it comes, the last one with the end of the response. Once a body takes more than one
    chunk, the client's connection is watched: when the client goes away, the rest of the service's answer
    is not read (an endless one would otherwise be read for ever, the server dropping every chunk).
    :class:`ClientStalled` when the client stops taking it."""
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    for cookie in response.cookies.values():
        headers.append((b"set-cookie", cookie.output(header="").strip().encode("latin-1")))
    if not isinstance(response, ProxiedResponse):
        body: bytes = response.content  # type: ignore[attr-defined]  # the gateway's own small answers
        if not response.has_header("Content-Length"):
            headers.append((b"content-length", str(len(body)).encode("latin-1")))
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await _send_in_time(send, {"type": "http.response.body", "body": body})
        return len(body)
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    sent = 0
    pending: bytes | None = None
    client_gone: asyncio.Future[None] | None = None
    try:
        async for chunk in response.body_stream:
            if pending is not None:
                if client_gone is None:
                    client_gone = asyncio.ensure_future(_disconnected(receive))
                elif client_gone.done():
                    return sent  # the body is left unread: its connection is closed, not reused
                await _send_in_time(send, {"type": "http.response.body", "body": pending, "more_body": True})
                sent += len(pending)
            pending = chunk
        await _send_in_time(send, {"type": "http.response.body", "body": pending or b""})
        return sent + len(pending or b"")
    except ClientStalled as stalled:
        stalled.sent = sent  # the body is left unread: its connection is closed, not reused
        raise
    finally:
        if client_gone is not None:
            client_gone.cancel()


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone (what is left of a request body is skipped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def django_side(wsgi_application: Callable[..., Any]) -> Callable[..., Any]:
    """Django's WSGI handler as a2wsgi calls it, with the environ gunicorn's WSGI worker gave it."""
    software = server_software()

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return wsgi_application(as_gunicorn_gave_it(environ, environ["asgi.scope"], software), start_response)

    return application


def raw_uri(scope: Scope) -> str:
    """The request target as the client sent it (gunicorn's ``RAW_URI``)."""
    query = scope.get("query_string", b"")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    return (raw_path + b"?" + query if query else raw_path).decode("latin-1")


def is_operations(path_info: str) -> bool:
    """Whether this (decoded) path is one of the gateway's health checks or its metrics."""
    return path_info in ("/health", "/metrics") or path_info.startswith("/health/")


def is_static(path_info: str) -> bool:
    """Whether this (decoded) path is a static file: the gateway's own, or a service's it forwards."""
    return path_info.startswith("/static/")


Bulkhead = tuple[Callable[[str], bool], ASGIApp]


def edge_application(django_app: ASGIApp, proxy_app: ASGIApp, bulkheads: Sequence[Bulkhead] = ()) -> ASGIApp:
    """The gateway's ASGI application: proxied API paths to ``proxy_app``; the paths a bulkhead's predicate
    takes to its own application (Django on threads of its own), the first that does; the rest to
    ``django_app``. The bulkheads keep what may hold threads for long (large static files read slowly:
    a client that stops reading holds its thread up to ``GATEWAY_SEND_TIMEOUT``) from the pages and the API
    answered on threads, and both from a load balancer's check or a scrape."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _move_client_trace_headers(scope)
            path_info = scope["shop.wsgi_path"] = wsgi_path(scope)
            # The same decoded path Django's URL resolver and the proxy view read (request.path_info).
            decoded = repercent_broken_unicode(path_info.encode("latin-1")).decode()
            if is_proxied(decoded):
                await proxy_app(scope, receive, send)
                return
            django = next((app for takes, app in bulkheads if takes(decoded)), django_app)
            await django(scope, await _with_whole_body(scope, receive), _UntilStalled(send))
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)
        # websocket: not served; returning closes it

    return application


class _UntilStalled:
    """The ``send`` to hand Django's side: each message within ``GATEWAY_SEND_TIMEOUT``
    (:func:`_send_in_time`); once the client has stalled, every later one is dropped at once. Django's
    thread then runs to the end of its answer instead of waiting on the client (a2wsgi's thread waits for
    each message to be taken, and an error here would leave it waiting for ever); the answer is left
    unfinished, so the server closes the connection."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.stalled = False

    async def __call__(self, message: Message) -> None:
        if self.stalled:
            return
        try:
            await _send_in_time(self.send, message)
        except ClientStalled:
            self.stalled = True


def django_side_body_limit() -> int:
    """The largest body a request for Django's side may carry: the gateway's own forms and the config center
    take at most ``DATA_UPLOAD_MAX_MEMORY_SIZE``, a service's admin pages at most their route's limit."""
    return max(settings.MAX_REQUEST_BODY_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)


# The headers that frame a request body, as the environ names them (for proxy.views.body_length).
_FRAMING_KEYS = {b"content-length": "CONTENT_LENGTH", b"transfer-encoding": "HTTP_TRANSFER_ENCODING"}


async def _with_whole_body(scope: Scope, receive: Receive) -> Receive:
    """The ``receive`` to hand Django's side: its body read whole here, on the event loop, first.

    Django reads a body on one of its few threads (``GATEWAY_DJANGO_THREADS``), a read at a time: a client
    trickling a body would hold that thread until it finished, and a handful of them every page of the
    gateway, ``/health`` included (nginx buffers request bodies before its upstreams for the same reason).
    Here a slow body waits as a coroutine, within ``GATEWAY_REQUEST_BODY_TIMEOUT`` and
    :func:`django_side_body_limit`; one that cannot be read whole is handed on empty, its refusal in the
    scope for :class:`proxy.middleware.UnreadBodyMiddleware` to answer, so the request still gets its
    request id, access line and metrics."""
    framing = {
        _FRAMING_KEYS[name]: value.decode("latin-1") for name, value in scope["headers"] if name in _FRAMING_KEYS
    }
    if not framing:
        return receive  # no body
    limit = django_side_body_limit()
    body = b""
    try:
        body_length({**framing, "wsgi.input_terminated": True}, limit)  # a declared length over it: refused unread
        body = await receive_whole_body(receive, limit)
    except ApplicationError as refusal:
        scope[BODY_REFUSAL_SCOPE_KEY] = refusal
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()  # past the body: only the client's disconnect is left to hear
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
