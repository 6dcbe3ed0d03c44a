"""Which headers cross the gateway, in each direction.

Towards a service, a client cannot speak for the gateway: anything the services would believe (the
assertion, ``X-Forwarded-*``, ``X-User-*``, ``X-Internal-*``) is dropped and the gateway sets its own; the
access token never leaves the gateway; hop-by-hop headers, and any header the client named in
``Connection``, belong to the client's connection only. Back to the client, the service's hop-by-hop
headers go, and so do ``Server``/``Date``, which the gateway's own server sets, and any CORS header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from urllib3 import HTTPHeaderDict

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def _environ_key(header: str) -> str:
    return "HTTP_" + header.strip().upper().replace("-", "_")


_DROPPED_REQUEST_KEYS = frozenset(
    {
        *(_environ_key(header) for header in HOP_BY_HOP),
        "HTTP_HOST",
        "HTTP_AUTHORIZATION",
        "HTTP_X_SERVICE_ASSERTION",
        "HTTP_X_REQUEST_ID",
        "HTTP_FORWARDED",
        "HTTP_X_REAL_IP",
        "HTTP_X_USER",
        "HTTP_EXPECT",  # the gateway has read the whole body already
        "HTTP_PROXY",  # httpoxy
    }
)
_DROPPED_REQUEST_PREFIXES = ("HTTP_X_FORWARDED_", "HTTP_X_USER_", "HTTP_X_INTERNAL_")
# CORS is the gateway's decision (django-cors-headers, CORS_ALLOWED_ORIGINS): a service's own CORS headers
# would grant origins the gateway does not.
_CORS_RESPONSE_HEADERS = frozenset(
    {
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-expose-headers",
        "access-control-max-age",
    }
)
_FOLD = re.compile(r"\r?\n[ \t]+")  # an obs-fold: a line break followed by whitespace
_DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | _CORS_RESPONSE_HEADERS | {"server", "date"}


def forwarded_request_headers(environ: Mapping[str, Any], *, own_cookies: Iterable[str]) -> dict[str, str]:
    """The client's headers that may go on to a service (the caller adds the gateway's own, the body's
    Content-Length included: the gateway frames the body it forwards, whatever the client sent)."""
    connection = environ.get("HTTP_CONNECTION")
    named = {_environ_key(token) for token in connection.split(",")} if connection else set()
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if (
            not key.startswith("HTTP_")
            or key in _DROPPED_REQUEST_KEYS
            or key.startswith(_DROPPED_REQUEST_PREFIXES)
            or key in named
        ):
            continue
        headers[key[5:].replace("_", "-").title()] = value
    # WSGI keeps Content-Type out of the HTTP_ keys; named in Connection it is hop-by-hop all the same
    # (RFC 9110 7.6.1), so it stays on the client's connection like any other header named there.
    content_type = environ.get("CONTENT_TYPE")
    if content_type and "HTTP_CONTENT_TYPE" not in named:
        headers["Content-Type"] = content_type
    cookie = headers.get("Cookie")
    if cookie:
        cookie = without_cookies(cookie, own_cookies)
        if cookie:
            headers["Cookie"] = cookie
        else:
            del headers["Cookie"]
    return headers


def without_cookies(cookie_header: str, names: Iterable[str]) -> str:
    """The gateway's own session and CSRF cookies are sent to every /admin/ path, including the ones it
    forwards; they are no business of the services."""
    names = [name for name in names if name in cookie_header]
    if not names:
        return cookie_header
    kept = [part.strip() for part in cookie_header.split(";") if part.strip().partition("=")[0] not in names]
    return "; ".join(part for part in kept if part)


def returned_response_headers(upstream: HTTPHeaderDict) -> tuple[dict[str, str], list[str]]:
    """The service's response headers for the client, and its Set-Cookie values apart (each must stay
    its own header line)."""
    connection = upstream.get("Connection")
    named = {token.strip().lower() for token in connection.split(",")} if connection else set()
    # The body is passed on de-chunked, so a Content-Length sent beside Transfer-Encoding (which RFC 9112
    # says to ignore) would frame it wrongly for the client.
    if "Transfer-Encoding" in upstream:
        named.add("content-length")
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in upstream.itermerged():
        lowered = name.lower()
        if lowered in _DROPPED_RESPONSE_HEADERS or lowered in named:
            continue
        if lowered == "set-cookie":
            cookies.extend(cookie for each in upstream.getlist(name) if (cookie := _unfolded(each)) is not None)
        elif (unfolded := _unfolded(value)) is not None:
            headers[name] = unfolded
    return headers, cookies


def _unfolded(value: str) -> str | None:
    """A header value as it may be passed on: an obsolete line folding replaced by a space (RFC 9112 5.2
    asks that of a proxy); None for a value that would still break the header block (a bare CR, LF, NUL)."""
    if "\r" in value or "\n" in value:
        value = _FOLD.sub(" ", value)
        if "\r" in value or "\n" in value:
            return None
    return None if "\x00" in value else value
