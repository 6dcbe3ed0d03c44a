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

from dataclasses import dataclass
from typing import Literal

ALL_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
READ_METHODS = frozenset({"GET", "HEAD"})
SERVICES = ("users", "orders", "payments")


@dataclass(frozen=True)
class Route:
    prefix: str
    service: str
    methods: frozenset[str]
    auth: Literal["required", "optional", "none"]
    kind: Literal["api", "web"]


def _web_routes(service: str) -> tuple[Route, ...]:
    return (
        Route(f"/admin/{service}/", service, ALL_METHODS, "none", "web"),
        Route(f"/static/{service}/", service, READ_METHODS, "none", "web"),
        Route(f"/api/docs/{service}/", service, READ_METHODS, "none", "web"),
        Route(f"/api/schema/{service}/", service, READ_METHODS, "none", "web"),
    )


API_ROUTES = (
    # Sign-in, refresh, sign-out: anonymous, or signed in for sign-out.
    Route("/api/v1/auth/", "users", frozenset({"POST"}), "optional", "api"),
    # Sign-up is anonymous; the user service enforces who may see or change which account.
    Route("/api/v1/users/", "users", ALL_METHODS, "optional", "api"),
    Route("/api/v1/products/", "orders", READ_METHODS, "optional", "api"),
    Route("/api/v1/orders/", "orders", ALL_METHODS, "required", "api"),
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
