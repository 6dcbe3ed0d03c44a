"""Per-route request limits and version headers, applied by the proxy view (see ``routes.py`` for the
values each route sets).

What gunicorn refuses before the gateway sees a request (``gunicorn.conf.py`` sets ``header_map =
"refuse"`` and renders those refusals as the usual JSON error): header names with underscores (WSGI maps
``X_User_Id`` and ``X-User-Id`` to the same key, which is how identity headers are smuggled past filters),
a duplicate or comma-listed ``Content-Length``, ``Content-Length`` together with ``Transfer-Encoding``,
malformed chunking, and a single header line over 8190 bytes. The proxy view refuses the rest, so that the
same rules hold under any WSGI server: both framings (400), a body over the route's limit (413, counted
while it is read, with or without ``Content-Length``), and all headers together over the route's limit
(431, RFC 6585).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import HttpResponseBase

from common.errors import ApplicationError
from proxy.routes import Route


class HeadersTooLarge(ApplicationError):
    status_code = 431
    code = "headers_too_large"
    message = "The request headers are too large."


def body_limit(route: Route) -> int:
    return settings.MAX_REQUEST_BODY_BYTES if route.max_body_bytes is None else route.max_body_bytes


def check_header_size(environ: Mapping[str, Any], route: Route) -> None:
    """All request header lines together (name, ": ", value, CRLF), as the client sent them."""
    limit = settings.MAX_REQUEST_HEADER_BYTES if route.max_header_bytes is None else route.max_header_bytes
    size = 0
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            size += len(key) - 1 + len(value)  # len(key) - len("HTTP_") + len(": \r\n")
    size += len(environ.get("CONTENT_TYPE") or "") + len(environ.get("CONTENT_LENGTH") or "")
    if size > limit:
        raise HeadersTooLarge(details={"max_bytes": limit})


def annotate_version(response: HttpResponseBase, route: Route) -> None:
    """A deprecated route says so on every answer: ``Deprecation`` (RFC 9745), ``Sunset`` (RFC 8594) and
    a ``Link`` to its successor, added to any ``Link`` the service sent."""
    deprecation = route.deprecation
    if deprecation is None:
        return
    response["Deprecation"] = deprecation.deprecation_header
    response["Sunset"] = deprecation.sunset_header
    existing = response.get("Link")
    response["Link"] = f"{existing}, {deprecation.link_header}" if existing else deprecation.link_header
