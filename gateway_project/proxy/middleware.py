from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

from common.errors import error_response
from proxy.paths import is_safe_path, raw_target
from proxy.views import refusal_response


class PathHygieneMiddleware:
    """Refuse unsafe paths before anything routes them: the gateway's own admin as well as the proxy."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return path_refusal(request) or self.get_response(request)


def path_refusal(request: HttpRequest) -> HttpResponseBase | None:
    """The 400 for an unsafe path; None for a safe one."""
    raw_path = raw_target(request).partition("?")[0]
    if not is_safe_path(raw_path, request.path):
        # The access log records the refusal (error "invalid_path"), never the attacker's path text.
        return error_response(400, "invalid_path", "The request path is not acceptable.")
    return None


# Where proxy/edge.py leaves the refusal of a body it could not read whole for Django's side (the environ
# key; an ApplicationError).
BODY_REFUSAL_ENVIRON_KEY = "shop.body_refusal"


class UnreadBodyMiddleware:
    """Answers a request whose body the edge could not read whole before Django got it (too slow, too large,
    cut short: proxy/edge.py reads every body on the event loop first) with that refusal, before anything
    would read the empty body it was handed instead."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        refusal = request.META.get(BODY_REFUSAL_ENVIRON_KEY)
        if refusal is None:
            return self.get_response(request)
        return refusal_response(refusal, request.META)
