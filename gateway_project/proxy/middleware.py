from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

from common.errors import error_response
from proxy.paths import is_safe_path, raw_target

access_logger = logging.getLogger("gateway.access")


class PathHygieneMiddleware:
    """Refuse unsafe paths before anything routes them: the gateway's own admin as well as the proxy."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        raw_path = raw_target(request).partition("?")[0]
        if not is_safe_path(raw_path, request.path):
            # repr() and a cut: the path is the attacker's text, it must not forge or flood log lines.
            access_logger.info(
                "%s %s refused=invalid_path status=400 client=%s",
                request.method,
                ascii(raw_path[:200]),
                request.META.get("REMOTE_ADDR", "-"),
            )
            return error_response(400, "invalid_path", "The request path is not acceptable.")
        return self.get_response(request)
