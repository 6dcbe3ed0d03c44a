"""Password guessing at the admin sign-in pages: the gateway's own ``/admin/login/`` and each service's
``/admin/<service>/login/``, which the gateway forwards.

The API's sign-in (``POST /api/v1/auth/token``) is limited by the ``login`` policy per client address
(proxy/routes.py); the admins' sign-in forms guard staff accounts, which can change the config center and
every service's data, and were only under the forwarded routes' ``default`` policy (the services') or no
limit at all (the gateway's own admin, which Django serves without the proxy). Each POST to one of them
now counts against the same ``login`` policy, by address, and is refused with 429 and ``Retry-After``
past it (503 while the store cannot count: the policy fails closed). Showing the form (GET) is not
counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

from common.errors import ApplicationError, error_response
from proxy import ratelimit
from proxy.routes import SERVICES, Route

# Only the rate-limit policy of this pseudo-route is used (its prefix is the access log's label).
ADMIN_SIGN_IN = Route("/admin/login/", "gateway", frozenset({"POST"}), "none", "web", rate_limit="login")
_SIGN_IN_PATH = re.compile(rf"^/admin/(?:(?:{'|'.join(map(re.escape, SERVICES))})/)?login/$")


class AdminSignInThrottleMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.method != "POST" or not _SIGN_IN_PATH.match(request.path_info):
            return self.get_response(request)
        quota = ratelimit.consume(request, ADMIN_SIGN_IN, user_id=None)
        assert quota is not None  # the route names a policy
        try:
            quota.enforce()
        except ApplicationError as exc:
            response = error_response(exc.status_code, exc.code, exc.message, exc.details)
        else:
            response = self.get_response(request)
        quota.annotate(response)
        return response
