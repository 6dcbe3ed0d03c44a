"""``GET /api/v1/me/overview``: the caller, their recent orders and each order's payment, composed by the
gateway from the three services.

The user and the orders are fetched in parallel; the payments of the orders (named by the orders) then in
parallel too. Each call has its own timeout (``OVERVIEW_CALL_TIMEOUT``, no retries) and goes through the
same breakers and balancer as proxied calls. A part that fails is named in ``missing`` and the rest is
still returned (``"complete": false``), like KrakenD's completeness flag: a slow payment service costs
the caller their payment details, not the page. Only when nothing at all could be fetched is the answer
an error (503 ``upstream_unavailable``). Each service sees the same service assertion for the user as for
a proxied call, so it applies its own rules (a user sees only their orders and payments).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from common.errors import ApplicationError, error_response
from common.internal_auth import HEADER as ASSERTION_HEADER
from common.internal_auth import mint_assertion
from common.request_id import HEADER as REQUEST_ID_HEADER
from common.request_id import get_request_id
from common.tokens import TokenError
from proxy import ratelimit, upstream
from proxy.auth import bearer_claims
from proxy.client_address import client_address
from proxy.routes import READ_METHODS, Route, UpstreamPolicy

logger = logging.getLogger(__name__)

PATH = "/api/v1/me/overview"
RECENT_ORDERS = 5
MAX_PART_BYTES = 1024 * 1024
# Not in the route table (nothing is forwarded); it exists so the rate limit counts it like any API call.
ROUTE = Route(PATH, "users", READ_METHODS, "required", "api")

# Shared by all requests of the worker: a pool per request would cost a thread start per call.
_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="overview")


class PartFailed(Exception):
    """A service gave no usable answer for its part."""


class _Caller:
    """The calls of one overview, all for the same user and request id (executor threads do not see the
    request's context, so everything they need is carried here)."""

    def __init__(self, *, user_id: int, is_staff: bool, request_id: str, client: str) -> None:
        self.user_id = user_id
        self.is_staff = is_staff
        self.request_id = request_id
        self.client = client
        timeout = settings.OVERVIEW_CALL_TIMEOUT
        self.policy = UpstreamPolicy(connect_timeout=timeout, read_timeout=timeout, deadline=timeout, retries=0)

    def get(self, service: str, target: str) -> Any:
        headers = {
            "Accept": "application/json",
            REQUEST_ID_HEADER: self.request_id,
            "X-Forwarded-For": self.client,
            ASSERTION_HEADER: mint_assertion(
                issuer=settings.SERVICE_NAME,
                audience=service,
                secret=settings.INTERNAL_AUTH_SECRET,
                user_id=self.user_id,
                is_staff=self.is_staff,
                request_id=self.request_id,
            ),
        }
        try:
            status, content = upstream.fetch(
                service, target, headers=headers, policy=self.policy, max_bytes=MAX_PART_BYTES + 1
            )
        except ApplicationError as exc:
            raise PartFailed(f"{service}: {exc.code}") from exc
        except Exception as exc:  # a broken or timed-out body: urllib3 raises several kinds
            raise PartFailed(f"{service}: body unreadable") from exc
        if status != 200 or len(content) > MAX_PART_BYTES:
            raise PartFailed(f"{service}: HTTP {status}")
        try:
            return json.loads(content)
        except ValueError as exc:
            raise PartFailed(f"{service}: not JSON") from exc


def _result(future: Future[Any], part: str, missing: list[str]) -> Any:
    # The calls bound themselves (timeouts, deadline); this only guards against a stuck thread.
    try:
        return future.result(timeout=settings.OVERVIEW_CALL_TIMEOUT * 2 + 1)
    except (PartFailed, FutureTimeout) as exc:
        logger.warning("overview: %s missing (%s)", part, exc or "timeout")
    except Exception:  # never a 500 for a part: log it, name it missing
        logger.exception("overview: %s failed", part)
    missing.append(part)
    return None


@csrf_exempt
def overview_view(request: HttpRequest) -> HttpResponseBase:
    request.gateway_route_label = PATH  # type: ignore[attr-defined]
    quota: ratelimit.Quota | None = None
    user_id: int | None = None
    try:
        if request.method not in READ_METHODS:
            response = error_response(405, "method_not_allowed", "This method is not allowed on this path.")
            response["Allow"] = "GET, HEAD"
            return response
        authorization = request.META.get("HTTP_AUTHORIZATION")
        if not authorization:
            raise TokenError("Authentication credentials were not provided.", code="not_authenticated")
        claims = bearer_claims(authorization)
        user_id = int(claims["sub"])
        quota = ratelimit.consume(request, ROUTE, user_id=user_id)
        if quota is not None:
            quota.enforce()
        response = _compose(
            _Caller(
                user_id=user_id,
                is_staff=bool(claims.get("staff", False)),
                request_id=get_request_id(),
                client=client_address(request.META),
            )
        )
    except ApplicationError as exc:
        response = error_response(exc.status_code, exc.code, exc.message, exc.details)
        if exc.status_code == 401:
            invalid = exc.code != "not_authenticated"
            response["WWW-Authenticate"] = 'Bearer error="invalid_token"' if invalid else "Bearer"
    request.gateway_user_id = user_id  # type: ignore[attr-defined]
    if quota is not None:
        quota.annotate(response)
    return response


def _compose(caller: _Caller) -> HttpResponseBase:
    missing: list[str] = []
    user_call = _executor.submit(caller.get, "users", f"/api/v1/users/{caller.user_id}/")
    orders_call = _executor.submit(caller.get, "orders", f"/api/v1/orders/?page_size={RECENT_ORDERS}")
    orders_page = _result(orders_call, "orders", missing)
    orders: list[dict[str, Any]] | None = None
    if isinstance(orders_page, dict) and isinstance(orders_page.get("results"), list):
        orders = orders_page["results"][:RECENT_ORDERS]
    elif orders_page is not None:
        missing.append("orders")
    payment_calls: dict[int, Future[Any]] = {}
    for order in orders or []:
        payment = order.get("payment") if isinstance(order, dict) else None
        if isinstance(payment, dict) and isinstance(payment.get("id"), int):
            payment_calls[order["id"]] = _executor.submit(caller.get, "payments", f"/api/v1/payments/{payment['id']}/")
    user = _result(user_call, "user", missing)
    payments_missing: list[str] = []
    for order in orders or []:
        call = payment_calls.get(order.get("id"))
        if call is not None:
            detail = _result(call, "payments", payments_missing)
            # Without the payment service, the order's own summary of its payment stays.
            if detail is not None:
                order["payment"] = detail
    if payments_missing:
        missing.append("payments")
    if user is None and orders is None:
        return error_response(
            503, "upstream_unavailable", "The services this overview is made of are unavailable.", {"missing": missing}
        )
    body = {"user": user, "orders": orders, "complete": not missing, "missing": missing}
    response = JsonResponse(body)
    response["Cache-Control"] = "private, no-store"
    return response
