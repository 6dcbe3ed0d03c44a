"""The proxy: one view for every forwarded path, and the system's health.

Per request the proxy matches the route, checks the method, verifies the access token (locally, no
network), reads the body within the size limit, mints the service assertion and streams the service's
answer back. It never touches the database, the session or the user, and it reads the body itself, so no
middleware parses the body of a proxied request.

It comes in two forms with the same steps (:class:`_Outcome` holds what they share):
:func:`proxy_view_async` on the worker's event loop for every forwarded ``/api/`` path (proxy/edge.py,
without Django's handler), and :func:`proxy_view` on Django's threads for the forwarded admin pages and
static files of the services, which Django's full handler routes here (gateway/urls.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.db import connection
from django.http import BadHeaderError, HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from common.errors import ApplicationError, UpstreamError, error_response
from common.internal_auth import HEADER as ASSERTION_HEADER
from common.internal_auth import mint_assertion
from common.metrics import metrics_allowed
from common.outbox import outbox_stats
from common.request_id import HEADER as REQUEST_ID_HEADER
from common.request_id import get_request_id
from common.tokens import TokenError
from proxy import hygiene, ratelimit, upstream
from proxy.auth import bearer_claims, cached_claims
from proxy.client_address import client_address, forwarded_proto
from proxy.headers import forwarded_request_headers, returned_response_headers
from proxy.paths import raw_target
from proxy.routes import Route, match_route

logger = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[dict[str, Any]]]  # an ASGI receive callable


class RouteNotFound(ApplicationError):
    status_code = 404
    code = "route_not_found"
    message = "No API route matches this path."


class MethodNotAllowed(ApplicationError):
    status_code = 405
    code = "method_not_allowed"
    message = "This method is not allowed on this path."


class NotAuthenticated(ApplicationError):
    status_code = 401
    code = "not_authenticated"
    message = "Authentication credentials were not provided."


# A body refused before it was read to its end (or one whose end cannot be known) is still arriving on the
# client's connection: kept alive, the server would read and discard all of it before the next request on
# it (or, for a body it cannot frame, take part of it for that request). So these answers close it
# (``closes_connection``), as nginx does for its 413. gunicorn.conf.py makes gunicorn honour the header,
# which it drops otherwise (PEP 3333 leaves hop-by-hop headers to the server).
class PayloadTooLarge(ApplicationError):
    status_code = 413
    code = "payload_too_large"
    message = "The request body is too large."
    closes_connection = True


class BadRequest(ApplicationError):
    """The body's framing is wrong or it could not be read: never read to its end."""

    status_code = 400
    code = "bad_request"
    closes_connection = True


class RequestTimeout(ApplicationError):
    """The body did not arrive whole within ``GATEWAY_REQUEST_BODY_TIMEOUT`` of the first wait for it. Each
    read is bounded by the server, but a body trickled a byte at a time would otherwise hold its request,
    and a connection, for ever (a slow-POST attack); the rest of it is never read, so the connection closes."""

    status_code = 408
    code = "request_timeout"
    message = "The request body did not arrive in time."
    closes_connection = True


class ExpectationFailed(ApplicationError):
    """An ``Expect`` other than ``100-continue``, the only expectation HTTP defines (RFC 9110 10.1.1): the
    gateway would meet no other, and does not pass it on. The body its sender may be holding back is never
    read, so the connection closes."""

    status_code = 417
    code = "expectation_failed"
    message = "The only expectation this gateway meets is 100-continue."
    closes_connection = True


class InvalidHost(ApplicationError):
    status_code = 400
    code = "invalid_host"
    message = "The Host header names no host this gateway serves."


class GatewayBusy(ApplicationError):
    """This worker already has ``GATEWAY_MAX_IN_FLIGHT`` forwarded requests open: each holds a connection
    to a service (a file descriptor) for as long as it lasts, and nothing else bounds them on an event
    loop. Shed at once, before any work, rather than queued."""

    status_code = 503
    code = "gateway_busy"
    message = "The gateway is handling as many requests as it can; try again shortly."
    headers = {"Retry-After": "1"}


class ProxiedResponse(StreamingHttpResponse):
    """A service's response, streamed. Django keeps one value per header name, so the service's
    Set-Cookie lines are kept apart and handed to the server as they came."""

    def __init__(self, body_stream: Any, *args: Any, set_cookies: list[str], **kwargs: Any) -> None:
        super().__init__(body_stream, *args, **kwargs)
        self.set_cookies = set_cookies
        self.body_stream = body_stream  # the edge streams it itself (proxy/edge.py)

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return [*self.headers.items(), *(("Set-Cookie", value) for value in self.set_cookies)]


@csrf_exempt
def proxy_view(request: HttpRequest) -> HttpResponseBase:
    """The proxy on a Django thread: the paths Django's full handler forwards (the services' admin pages and
    static files). Every ``/api/`` path is answered by :func:`proxy_view_async` on the event loop."""
    outcome = _Outcome(request)
    try:
        route = outcome.checked_route()
        identity = _authenticate(request, route)
        outcome.admit(identity, ratelimit.consume(request, route, user_id=identity[0]))
        body = _read_body(request.META, hygiene.body_limit(outcome.route))
        headers = _upstream_headers(request, outcome, body)
        answer = upstream.send_blocking(
            outcome.route.service,
            request.method or "GET",
            outcome.target,
            headers=headers,
            body=body or None,
            policy=outcome.route.upstream,
            anonymous=outcome.user_id is None,
        )
        response = _proxied_response(request, outcome.route, answer, upstream.BlockingBody(answer))
    except ApplicationError as exc:
        uncounted = outcome.uncounted_route()
        response = outcome.refusal(exc, ratelimit.consume(request, uncounted, user_id=None) if uncounted else None)
    return outcome.finish(response)


async def proxy_view_async(request: HttpRequest, receive: Receive, *, busy: bool = False) -> HttpResponseBase:
    """The proxy on the event loop (proxy/edge.py): every forwarded ``/api/`` path. The same steps as
    :func:`proxy_view`; the body comes from the ASGI ``receive`` and the answer streams from the loop's
    own connection. ``busy``: the worker has as many requests open as it allows (:class:`GatewayBusy`)."""
    outcome = _Outcome(request)
    try:
        if busy:
            raise GatewayBusy()
        route = outcome.checked_route()
        identity = await _authenticate_async(request, route)
        outcome.admit(identity, await ratelimit.consume_async(request, route, user_id=identity[0]))
        body = await _receive_body(request.META, receive, hygiene.body_limit(route))
        headers = _upstream_headers(request, outcome, body)
        answer = await upstream.send(
            route.service,
            request.method or "GET",
            outcome.target,
            headers=headers,
            body=body or None,
            policy=route.upstream,
            anonymous=outcome.user_id is None,
        )
        response = _proxied_response(request, route, answer, upstream.UpstreamBody(answer))
    except ApplicationError as exc:
        uncounted = outcome.uncounted_route()
        quota = await ratelimit.consume_async(request, uncounted, user_id=None) if uncounted else None
        response = outcome.refusal(exc, quota)
    return outcome.finish(response)


class _Outcome:
    """One proxied request's checks and what they found, shared by the two forms of the proxy view."""

    def __init__(self, request: HttpRequest) -> None:
        self.request = request
        self.target = raw_target(request)
        self.found_route = match_route(request.path_info)
        self.user_id: int | None = None
        self.is_staff = False
        self.quota: ratelimit.Quota | None = None
        self.host = ""

    @property
    def route(self) -> Route:
        assert self.found_route is not None  # checked_route() has been called
        return self.found_route

    def checked_route(self) -> Route:
        """The route, once the method and header size are acceptable for it."""
        route = self.found_route
        if route is None:
            raise RouteNotFound()
        if self.request.method not in route.methods:
            raise MethodNotAllowed(details={"allowed": sorted(route.methods)})
        expectation = self.request.META.get("HTTP_EXPECT")
        if expectation is not None and expectation.strip().lower() != "100-continue":
            raise ExpectationFailed()
        hygiene.check_header_size(self.request.META, route)
        return route

    def admit(self, identity: tuple[int | None, bool], quota: ratelimit.Quota | None) -> None:
        """Take the caller's identity and the request's standing against its rate limit (counted by the
        caller after authentication, so keyed by user), enforce that, and check the Host."""
        self.user_id, self.is_staff = identity
        self.quota = quota
        if quota is not None:
            quota.enforce()  # 429, or 503 when a fail-closed route cannot count
        self.host = _allowed_host(self.request)

    def uncounted_route(self) -> Route | None:
        """The route of a request refused before it was counted (a bad token, a wrong method): it still
        counts, by address (the caller counts it and hands the quota to :meth:`refusal`)."""
        return self.found_route if self.quota is None else None

    def refusal(self, exc: ApplicationError, quota: ratelimit.Quota | None = None) -> HttpResponseBase:
        self.quota = self.quota or quota
        response = refusal_response(exc, self.request.META)
        if isinstance(exc, MethodNotAllowed):
            response["Allow"] = ", ".join(sorted(exc.details["allowed"]))
        elif exc.status_code == 401:
            response["WWW-Authenticate"] = 'Bearer error="invalid_token"' if isinstance(exc, TokenError) else "Bearer"
        return response

    def finish(self, response: HttpResponseBase) -> HttpResponseBase:
        if self.quota is not None:
            self.quota.annotate(response)
        if self.found_route is not None:
            hygiene.annotate_version(response, self.found_route)
        # For the access log and the metrics (proxy/observability.py), which see the final response.
        self.request.gateway_route = self.found_route  # type: ignore[attr-defined]
        self.request.gateway_user_id = self.user_id  # type: ignore[attr-defined]
        return response


def _authenticate(request: HttpRequest, route: Route) -> tuple[int | None, bool]:
    """The user id (None: anonymous) and staff flag the service will be told about."""
    if route.auth == "none":
        return None, False
    authorization = request.META.get("HTTP_AUTHORIZATION")
    if authorization:
        claims = bearer_claims(authorization)
        return int(claims["sub"]), bool(claims.get("staff", False))
    if route.auth == "required":
        raise NotAuthenticated()
    return None, False


async def _authenticate_async(request: HttpRequest, route: Route) -> tuple[int | None, bool]:
    """:func:`_authenticate` without blocking the loop: a token verified recently is a dictionary lookup;
    a new one is verified on a thread, since it may need the user service's keys fetched first."""
    authorization = request.META.get("HTTP_AUTHORIZATION")
    if route.auth == "none" or not authorization or cached_claims(authorization) is not None:
        return _authenticate(request, route)
    return await asyncio.get_running_loop().run_in_executor(None, _authenticate, request, route)


def refusal_response(exc: ApplicationError, environ: dict[str, Any]) -> HttpResponseBase:
    """The error envelope of a refused request, with the refusal's own headers, closing the connection
    when the refusal leaves a body unread (``closes_connection``)."""
    response = error_response(exc.status_code, exc.code, exc.message, exc.details)
    for name, value in getattr(exc, "headers", {}).items():  # e.g. an open breaker's Retry-After
        response[name] = value
    if getattr(exc, "closes_connection", False) and _server_honours_close(environ):
        response["Connection"] = "close"
    return response


def _server_honours_close(environ: dict[str, Any]) -> bool:
    """Whether the server closes the connection on the application's ``Connection: close``: gunicorn,
    which gunicorn.conf.py teaches to. PEP 3333 leaves hop-by-hop headers to the server, and others
    refuse them (wsgiref, under ``runserver``, turns the answer into a 500) or drop them: no such header
    goes to a server not known to honour it."""
    return str(environ.get("SERVER_SOFTWARE", "")).startswith("gunicorn/")


def _allowed_host(request: HttpRequest) -> str:
    """The Host (or X-Forwarded-Host, with USE_X_FORWARDED_HOST) the services are told about, if it is in
    ALLOWED_HOSTS. Checked here rather than left to Django, whose DisallowedHost would become a bare 400
    after the request was counted: without the RateLimit headers every answer of a limited route carries,
    and with an access-log line missing its route and user."""
    try:
        return request.get_host()
    except DisallowedHost as exc:
        raise InvalidHost() from exc


def body_length(environ: Mapping[str, Any], limit: int) -> int | None:
    """How much of the body to read: its declared length, ``limit + 1`` for a body the server de-chunks
    (one byte past the limit tells it is too long), or None for no body. Refuses a declared length over
    the limit unread, and a request with two framings."""
    declared = environ.get("CONTENT_LENGTH")
    if declared and "HTTP_TRANSFER_ENCODING" in environ:
        # Two framings for one body is how requests are smuggled past a proxy.
        raise BadRequest("A request must not carry both Content-Length and Transfer-Encoding.")
    if declared:
        if not declared.isdigit():
            raise BadRequest("The Content-Length header is invalid.")
        if int(declared) > limit:
            raise PayloadTooLarge(details={"max_bytes": limit})
        return int(declared)
    if environ.get("wsgi.input_terminated"):
        # The server (gunicorn; the ASGI edge) ends the input where the body ends, chunked or absent.
        return limit + 1
    return None  # no Content-Length and no server-side framing: no body


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """At most ``limit`` bytes of the body, straight from the WSGI input."""
    to_read = body_length(environ, limit)
    if to_read is None:
        return b""
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    received = 0
    try:
        while received < to_read:
            chunk = stream.read(to_read - received)
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
    except OSError as exc:
        raise BadRequest("The request body could not be read.") from exc
    if received > limit:
        raise PayloadTooLarge(details={"max_bytes": limit})
    return b"".join(chunks)


async def _receive_body(environ: dict[str, Any], receive: Receive, limit: int) -> bytes:
    """At most ``limit`` bytes of the body, from the ASGI messages (:func:`receive_whole_body`)."""
    if body_length(environ, limit) is None:
        return b""
    return await receive_whole_body(receive, limit)


async def receive_whole_body(receive: Receive, limit: int) -> bytes:
    """The whole body from the ASGI messages, at most ``limit`` bytes of it, within
    ``GATEWAY_REQUEST_BODY_TIMEOUT``. Counted as it arrives, so a chunked body is refused once it passes the
    limit, without being read to its end (:class:`PayloadTooLarge`); a body not whole in time is
    :class:`RequestTimeout`, one cut short by the client :class:`BadRequest`."""
    timeout = settings.GATEWAY_REQUEST_BODY_TIMEOUT
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    chunks: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect: the client went away mid-body
                    raise BadRequest("The request body could not be read.")
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    raise PayloadTooLarge(details={"max_bytes": limit})
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
                # gunicorn's receive waits with asyncio.wait_for, which on Python 3.11 swallows the timeout's
                # cancellation when a piece of body arrives at the same moment (a trickled body, whose bytes
                # keep coming, hit that in a fault run): the clock is checked too.
                if loop.time() >= deadline:
                    raise TimeoutError
    except TimeoutError as exc:
        raise RequestTimeout(details={"timeout_seconds": timeout}) from exc


def _upstream_headers(request: HttpRequest, outcome: _Outcome, body: bytes) -> dict[str, str]:
    environ = request.META
    request_id = get_request_id()
    headers = forwarded_request_headers(environ, own_cookies=(settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME))
    headers[REQUEST_ID_HEADER] = request_id
    headers["X-Forwarded-For"] = client_address(environ)
    headers["X-Forwarded-Proto"] = forwarded_proto(environ)
    headers["X-Forwarded-Host"] = outcome.host
    headers[ASSERTION_HEADER] = mint_assertion(
        issuer=settings.SERVICE_NAME,
        audience=outcome.route.service,
        secret=settings.INTERNAL_AUTH_SECRET,
        user_id=outcome.user_id,
        is_staff=outcome.is_staff,
        request_id=request_id,
    )
    if body or "CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ:
        headers["Content-Length"] = str(len(body))
    return headers


def _proxied_response(
    request: HttpRequest,
    route: Route,
    answer: upstream.Answer,
    body_stream: upstream.UpstreamBody | upstream.BlockingBody,
) -> HttpResponseBase:
    request.gateway_upstream = answer.instance  # type: ignore[attr-defined]  # for the access log
    try:
        response_headers, set_cookies = returned_response_headers(answer.headers)
        response = ProxiedResponse(
            body_stream,
            status=answer.status,
            reason=answer.reason or None,
            headers=response_headers,
            set_cookies=set_cookies,
        )
    except (ValueError, BadHeaderError) as exc:
        # A response Django will not pass on (an out-of-range status, a header it refuses): the service's
        # fault, so 502; and its connection and the instance's outstanding count are released here, since
        # no response will ever close the stream.
        body_stream.close()
        logger.warning("unusable response from %s: %s", route.service, exc)
        raise UpstreamError(details={"service": route.service, "reason": "invalid_response"}) from exc
    if not any(name.lower() == "content-type" for name in response_headers):
        del response["Content-Type"]  # Django's default would claim a type the service never sent
    return response


# /health is public (load balancers and uptime checks call it) and unthrottled, and the full document costs
# a database query, a probe of the rate-limit store and a call to every service. So a worker computes it at
# most once per HEALTH_DOCUMENT_MAX_AGE and answers every /health meanwhile from that copy: a flood costs
# no more than one caller. A second is short next to anything that polls /health, and next to how fast an
# operator reacts to what it shows.
HEALTH_DOCUMENT_MAX_AGE = 1.0  # seconds


class HealthDocument:
    """This worker's latest full health document and its status code."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._lock = threading.Lock()
        self._latest: tuple[float, dict[str, Any], int] | None = None  # (computed at, body, status)

    def get(self) -> tuple[dict[str, Any], int]:
        latest = self._latest
        if latest is not None:
            if time.monotonic() - latest[0] < self.max_age:
                return latest[1], latest[2]
            # Another thread is computing the next one (which may take HEALTH_CHECK_TIMEOUT): this one
            # answers with the last, rather than holding a worker thread or calling the services again.
            if not self._lock.acquire(blocking=False):
                return latest[1], latest[2]
        else:
            self._lock.acquire()  # the worker's first: nothing to answer with but the one being computed
        try:
            latest = self._latest
            if latest is None or time.monotonic() - latest[0] >= self.max_age:
                body, status = _health_document()
                latest = self._latest = (time.monotonic(), body, status)
            return latest[1], latest[2]
        finally:
            self._lock.release()

    def clear(self) -> None:
        self._latest = None


health_document = HealthDocument(max_age=HEALTH_DOCUMENT_MAX_AGE)


def health_view(request: HttpRequest) -> JsonResponse:
    """The gateway's database and every service's own /health/, checked in parallel. In full for the peers
    that may read /metrics (the same guard: internal networks, judged by the socket, never a relayed
    request); anyone else gets the status alone, with the same status code. The full document names
    internal instance URLs, each service's checks and backlogs: a map for an attacker, and no use to a
    load balancer, which only needs the code."""
    if request.method not in ("GET", "HEAD"):
        return error_response(405, "method_not_allowed", "This method is not allowed on this path.")
    body, status = health_document.get()
    response = JsonResponse(body if metrics_allowed(request) else {"status": body["status"]}, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _health_document() -> tuple[dict[str, Any], int]:
    """The full document and its status code, checked now."""
    upstreams = {name: upstream.health_target(name) for name in settings.UPSTREAMS}  # one instance each
    request_id = get_request_id()  # the executor's threads do not see this request's context
    with ThreadPoolExecutor(max_workers=len(upstreams), thread_name_prefix="health") as executor:
        futures = {
            name: executor.submit(_service_health, base_url, request_id=request_id)
            for name, base_url in upstreams.items()
        }
        gateway = _own_health()
        services = {name: future.result() for name, future in futures.items()}
    down = [name for name, result in services.items() if result["status"] != "ok"]
    if gateway["status"] != "ok":
        down.insert(0, "gateway")
    body: dict[str, Any] = {"status": "unavailable" if down else "ok", "gateway": gateway, "services": services}
    # Shown, not counted as down: while the store is out, fail-open routes keep serving (proxy/ratelimit.py).
    body["rate_limit"] = ratelimit.store_health()
    body["upstreams"] = upstream.upstreams_status()  # breakers and instances, as this worker sees them
    if down:
        body["down"] = down
    return body, 503 if down else 200


def live_view(request: HttpRequest) -> JsonResponse:
    """Liveness: this process answers; no dependency is checked (an outage is not cured by a restart)."""
    response = JsonResponse({"status": "ok"})
    response["Cache-Control"] = "no-store"
    return response


def ready_view(request: HttpRequest) -> JsonResponse:
    """Readiness of the gateway itself: its database. The services' state is /health's (they have their own
    readiness), and the rate-limit store is not counted: fail-open routes keep serving without it."""
    own = _own_health()
    response = JsonResponse(own, status=200 if own["status"] == "ok" else 503)
    response["Cache-Control"] = "no-store"
    return response


def _own_health() -> dict[str, Any]:
    """The gateway's database, and its outbox (the config center publishes ``config.changed`` through it):
    pending events and the oldest one's age, failing as the services' outbox check does once the oldest
    has waited longer than ``OUTBOX_MAX_LAG_SECONDS`` (the relay is down, or the broker has been a while)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        outbox = outbox_stats()
    except Exception as exc:  # any driver error means the same thing here: the database is unusable
        logger.warning("gateway database check failed: %s", exc)
        return {"status": "down", "checks": {"database": "unavailable"}}
    checks = {"database": "ok", "outbox": "ok"}
    lag = outbox.oldest_pending_seconds
    if lag is not None and lag > settings.OUTBOX_MAX_LAG_SECONDS:
        checks["outbox"] = f"Outbox lagging: oldest pending event {lag:.0f}s old"
    status = "ok" if all(value == "ok" for value in checks.values()) else "down"
    return {"status": status, "checks": checks, "events": {"outbox": outbox.as_dict()}}


def _service_health(base_url: str, *, request_id: str) -> dict[str, Any]:
    timeout = settings.HEALTH_CHECK_TIMEOUT
    try:
        answer = upstream.connection_pool(base_url).urlopen(
            "GET",
            "/health/",
            headers={"Accept": "application/json", REQUEST_ID_HEADER: request_id},
            retries=False,
            redirect=False,
            timeout=upstream.timeout(timeout, timeout),
        )
    except urllib3.exceptions.NewConnectionError:  # a subclass of the timeout errors, but refused
        return {"status": "down", "reason": "unreachable"}
    except urllib3.exceptions.TimeoutError:
        return {"status": "down", "reason": "timeout"}
    except urllib3.exceptions.HTTPError:
        return {"status": "down", "reason": "unreachable"}
    try:
        checks = answer.json()
    except ValueError:
        checks = None
    if answer.status != 200:
        return {"status": "down", "reason": f"HTTP {answer.status}", "checks": checks or {}}
    if not isinstance(checks, dict):
        return {"status": "down", "reason": "invalid health document"}
    return {"status": "ok", "checks": checks}
