"""The route table: which service owns which public path, which methods it accepts there, and whether a
client must be signed in. Paths are forwarded unchanged; the longest matching prefix wins.

``auth``:
- ``required``: no or an invalid access token -> 401.
- ``optional``: a valid token identifies the user, an invalid one is still 401, none -> anonymous (the
  service decides what an anonymous caller may do).
- ``none``: web pages (admin, static files, API docs); the Authorization header is ignored and dropped,
  the service sees an anonymous assertion and uses its own session login.
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass
from datetime import date
from typing import Literal

from django.utils.http import http_date

ALL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
READ_METHODS = frozenset({"GET", "HEAD"})
SERVICES = ("users", "orders", "payments")


@dataclass(frozen=True)
class UpstreamPolicy:
    """How the gateway calls the service for a route (see proxy/upstream.py). Timeouts are in seconds;
    None takes the config center's ``upstream.connect_timeout`` / ``upstream.read_timeout`` if set, else the
    UPSTREAM_* settings. ``retries``: extra attempts for an idempotent request (GET, HEAD, OPTIONS, PUT,
    DELETE, or a POST carrying Idempotency-Key where ``honours_idempotency_key``), within the deadline and
    the service's retry budget. ``honours_idempotency_key``: the service stores ``Idempotency-Key``s for
    POSTs on this route (common/idempotency.py), so a repeated POST replays the first answer instead of
    doing the work twice; elsewhere the header means nothing to the service and the POST is never retried.
    ``stale_fallback``: while the service is down or its breaker open, answer a GET with a recent copy of
    an earlier anonymous 200 marked ``X-Cache: stale`` instead of the 503 (unless the config center's
    ``feature.stale_fallback`` is false)."""

    connect_timeout: float | None = None
    read_timeout: float | None = None
    deadline: float | None = None
    retries: int = 2
    honours_idempotency_key: bool = False
    stale_fallback: bool = False


DEFAULT_UPSTREAM = UpstreamPolicy()
# Placing an order stores its Idempotency-Key (README, Idempotency keys). The route also carries the
# order's cancel (POST .../cancel), which ignores the key but is idempotent itself: cancelling a cancelled
# order changes nothing (orders/services.py order_cancel).
ORDERS_UPSTREAM = UpstreamPolicy(honours_idempotency_key=True)
# The catalog is read by everyone and changes slowly: give up sooner, and show a recent copy when down.
CATALOG_UPSTREAM = UpstreamPolicy(connect_timeout=1.0, deadline=8.0, stale_fallback=True)


@dataclass(frozen=True)
class RateLimitPolicy:
    """How many requests one client may make per window on the routes naming this policy (see
    proxy/ratelimit.py). ``rate_setting`` names the setting holding the rate ("600/minute"), so each
    can be changed from the environment. ``key``: ``user_or_address`` counts a signed-in caller by user
    id and anyone else by client address; ``address`` always by address. ``on_store_failure``: while the
    shared counter store (Redis, or SQLite in embedded mode) is unreachable, ``open`` serves with a
    per-process count of the same limit, ``closed`` refuses with 503 ``rate_limit_unavailable``."""

    rate_setting: str
    key: Literal["user_or_address", "address"]
    on_store_failure: Literal["open", "closed"]


RATE_LIMIT_POLICIES: dict[str, RateLimitPolicy] = {
    "default": RateLimitPolicy("RATE_LIMIT_DEFAULT", key="user_or_address", on_store_failure="open"),
    # Password guessing: counted per address whatever token comes along, and refused while the store is
    # down, since a per-process count would multiply the guesses by the number of gateway processes.
    # (The user service also throttles sign-in per account.)
    "login": RateLimitPolicy("RATE_LIMIT_LOGIN", key="address", on_store_failure="closed"),
}


@dataclass(frozen=True)
class Deprecation:
    """A route version on its way out: since when, until when it answers, and what replaces it."""

    deprecated: date
    sunset: date
    successor: str  # path or URL of the version to use instead

    @functools.cached_property
    def deprecation_header(self) -> str:
        # RFC 9745: a structured-field date, seconds since the epoch, the start of that day in UTC.
        return f"@{calendar.timegm(self.deprecated.timetuple())}"

    @functools.cached_property
    def sunset_header(self) -> str:
        return http_date(calendar.timegm(self.sunset.timetuple()))  # RFC 8594: an HTTP-date

    @functools.cached_property
    def link_header(self) -> str:
        return f'<{self.successor}>; rel="successor-version"'


@dataclass(frozen=True)
class Route:
    prefix: str
    service: str
    methods: frozenset[str]
    auth: Literal["required", "optional", "none"]
    kind: Literal["api", "web"]
    upstream: UpstreamPolicy = DEFAULT_UPSTREAM
    # Size limits (proxy/hygiene.py); None: the MAX_REQUEST_BODY_BYTES / MAX_REQUEST_HEADER_BYTES settings.
    max_body_bytes: int | None = None
    max_header_bytes: int | None = None
    deprecation: Deprecation | None = None  # a deprecated version: answers carry Deprecation and Sunset
    rate_limit: str | None = "default"  # a key of RATE_LIMIT_POLICIES; None: not limited


def _web_routes(service: str) -> tuple[Route, ...]:
    return (
        Route(f"/admin/{service}/", service, ALL_METHODS, "none", "web"),
        Route(f"/static/{service}/", service, READ_METHODS, "none", "web"),
    )


AUTH_MAX_BODY_BYTES = 16 * 1024
AUTH_MAX_HEADER_BYTES = 8 * 1024

API_ROUTES = (
    # Sign-in, refresh, sign-out: anonymous, or signed in for sign-out.
    # Credentials and refresh tokens are small: a large body or header block here is an attack.
    Route(
        "/api/v1/auth/token",
        "users",
        frozenset({"POST"}),
        "optional",
        "api",
        rate_limit="login",
        max_body_bytes=AUTH_MAX_BODY_BYTES,
        max_header_bytes=AUTH_MAX_HEADER_BYTES,
    ),
    Route(
        "/api/v1/auth/",
        "users",
        frozenset({"POST"}),
        "optional",
        "api",
        max_body_bytes=AUTH_MAX_BODY_BYTES,
        max_header_bytes=AUTH_MAX_HEADER_BYTES,
    ),
    # Sign-up is anonymous; the user service enforces who may see or change which account.
    Route("/api/v1/users/", "users", ALL_METHODS, "optional", "api"),
    # v1 lists every product in one array with a bare price; v2 pages with a cursor and prices with a currency.
    Route(
        "/api/v1/products/",
        "orders",
        READ_METHODS,
        "optional",
        "api",
        upstream=CATALOG_UPSTREAM,
        deprecation=Deprecation(deprecated=date(2026, 11, 27), sunset=date(2027, 6, 30), successor="/api/v2/products/"),
    ),
    Route("/api/v2/products/", "orders", READ_METHODS, "optional", "api", upstream=CATALOG_UPSTREAM),
    Route("/api/v1/orders/", "orders", ALL_METHODS, "required", "api", upstream=ORDERS_UPSTREAM),
    # Payments are made by the order service; clients can only look at theirs.
    Route("/api/v1/payments/", "payments", READ_METHODS, "required", "api"),
)

ROUTES: tuple[Route, ...] = tuple(
    sorted(
        (*API_ROUTES, *(route for service in SERVICES for route in _web_routes(service))),
        key=lambda route: len(route.prefix),
        reverse=True,
    )
)

# Paths the gateway forwards; anything else is the gateway's own (its admin, static files, /health).
# Every /api/ path belongs to the proxy, so an unknown one gets the proxy's 404.
FORWARDED_PREFIXES: tuple[str, ...] = (
    "/api/",
    *(route.prefix for route in ROUTES if not route.prefix.startswith("/api/")),
)


def match_route(path: str) -> Route | None:
    for route in ROUTES:
        if path.startswith(route.prefix):
            return route
    return None
