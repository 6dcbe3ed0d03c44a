"""One JSON access-log line and the metrics for every request the gateway answers, and ``/metrics``.

:class:`AccessLogMiddleware` wraps everything (proxied paths, the gateway's own views, refusals by the
path hygiene), so there is exactly one line per request: it is in both middleware lists, Django's full one
and the lean proxy handler's (``proxy/edge.py``). The proxy tells it what it knows on the request
object: ``gateway_route`` (the matched :class:`~proxy.routes.Route`), ``gateway_user_id`` and
``gateway_upstream`` (the instance that served it). A streamed response is logged when the server closes
it, once the last byte went out, so the line has the full duration and the bytes really sent.

Never logged: the token, the query string (it may carry secrets), any header or body.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase

from common.errors import error_response
from common.metrics import metrics_allowed
from common.request_id import HEADER as REQUEST_ID_HEADER
from common.request_id import get_request_id
from proxy import metrics
from proxy.client_address import client_address

access_logger = logging.getLogger("gateway.access")

# Gateway-made errors are small JSON envelopes; anything larger is not one of ours.
_MAX_ERROR_BODY = 8192


def route_label(request: HttpRequest) -> str:
    """A bounded label for the request's route: the route table's prefix, or the gateway's own view."""
    route = getattr(request, "gateway_route", None)
    if route is not None:
        return str(route.prefix)
    label = getattr(request, "gateway_route_label", None)
    if label:
        return str(label)
    path = request.path_info
    if path.startswith("/admin/"):
        return "/admin/"
    if path.startswith(settings.STATIC_URL):
        return settings.STATIC_URL
    match = request.resolver_match
    if match is not None and not path.startswith("/api/"):
        return "/" + match.route.lstrip("^")
    return "unmatched"


def error_code_of(response: HttpResponseBase) -> str | None:
    """The code of a gateway-made error envelope (small, JSON, not streamed); None otherwise."""
    if response.status_code < 400 or response.streaming:
        return None
    content: bytes = response.content  # type: ignore[attr-defined]
    if len(content) > _MAX_ERROR_BODY or not response.get("Content-Type", "").startswith("application/json"):
        return None
    try:
        code = json.loads(content)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


class _CountingBody:
    """A streamed body that counts what went out and reports once the server closes the response."""

    def __init__(self, inner: Iterable[bytes], done: Callable[[int], None]) -> None:
        self._inner = inner
        self._done: Callable[[int], None] | None = done
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(self.sent)


class AccessLogMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        # The request id's context ends with the middleware above; a streamed body outlives it.
        request_id = response.get(REQUEST_ID_HEADER) or get_request_id()
        error_code = error_code_of(response)

        def finish(sent: int) -> None:
            log_and_count(request, response, request_id, error_code, time.perf_counter() - started, sent)

        if isinstance(response, FileResponse):
            # A static file: left to the server's sendfile, and its length is known.
            finish(int(response.get("Content-Length") or 0))
        elif response.streaming:
            # Django registers the body's close() with the response's; the server calls it when done.
            response.streaming_content = _CountingBody(response.streaming_content, finish)  # type: ignore[attr-defined]
        else:
            finish(len(response.content))  # type: ignore[attr-defined]
        return response


def log_and_count(
    request: HttpRequest,
    response: HttpResponseBase,
    request_id: str,
    error_code: str | None,
    duration: float,
    sent: int,
) -> None:
    route = getattr(request, "gateway_route", None)
    service = route.service if route is not None else None
    label = route_label(request)
    status = response.status_code
    metrics.record(
        route=label,
        method=request.method or "-",
        status=status,
        duration=duration,
        service=service,
        error_code=error_code,
    )
    if not access_logger.isEnabledFor(logging.INFO):
        return
    # The formatter (common.logs) adds time, service ("gateway"), level, logger, message and trace id.
    entry: dict[str, Any] = {
        "request_id": request_id,
        "method": request.method,
        "route": label,
        "upstream_service": service,
        "upstream": getattr(request, "gateway_upstream", None) or service,
        "status": status,
        "duration_ms": round(duration * 1000, 2),
        "user_id": getattr(request, "gateway_user_id", None),
        "client": client_address(request.META),  # the socket's peer, or per TRUSTED_PROXY_COUNT
        "bytes": sent,
    }
    if error_code is not None:
        entry["error"] = error_code
    # The request id is given explicitly: a streamed body is logged after the request's context has ended.
    # Logger.info would also look up the caller's file and line in the stack (a tenth of this line's cost),
    # which the JSON line never shows: the record is made and handed to the handlers directly.
    access_logger.handle(
        access_logger.makeRecord(
            access_logger.name,
            logging.INFO,
            __file__,
            0,
            "%s %s %s",
            (request.method, label, status),
            None,
            extra={"fields": entry, "request_id": request_id},
        )
    )


# /metrics: the address guard is shared with the services (common.metrics.metrics_allowed)


def metrics_view(request: HttpRequest) -> HttpResponseBase:
    request.gateway_route_label = "/metrics"  # type: ignore[attr-defined]
    if not metrics_allowed(request):
        # The same answer as any unknown path: nothing tells the public this exists.
        return error_response(404, "not_found", "No such resource.")
    if request.method not in ("GET", "HEAD"):
        return error_response(405, "method_not_allowed", "This method is not allowed on this path.")
    response = HttpResponse(metrics.exposition(), content_type=metrics.CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response
