"""The order saga's calls to the payment service, each turned into an outcome the saga can act on.

Nothing here raises for a network or service failure: a timeout, a refused connection, a 5xx, a 409 (our
own earlier request with the same key still running) or an answer that does not match the order all mean
*unknown* — the charge may or may not have happened — and the saga keeps the order ``payment_pending``
and asks again later. Only a well-formed answer about this very order's charge is ever believed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

import requests

from common.errors import ApplicationError
from common.internal_auth import Principal
from orders.clients import payment_service_client
from orders.models import Order

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"  # charged
    FAILED = "failed"  # declined: nothing was charged
    INVALID_METHOD = "invalid_method"  # refused before any charge
    REFUNDED = "refunded"
    NOT_FOUND = "not_found"  # a lookup: the payment service has no charge for this order
    UNKNOWN = "unknown"  # no trustworthy answer: ask again later


@dataclass(frozen=True)
class PaymentAnswer:
    outcome: Outcome
    payment_id: int | None = None
    failure_code: str = ""
    error: str = ""  # why the outcome is unknown, for the order's history


def charge_idempotency_key(order: Order) -> str:
    # Derived from the order, never random: every retry of this order's charge, from the request or the
    # background, is the same charge to the payment service.
    return f"order-{order.reference}-charge"


def _acting_for(order: Order) -> Principal:
    # The background has no client request to relay; the assertion acts for the order's owner.
    return Principal(id=order.user_id, is_staff=False, caller="orders")


def charge(order: Order) -> PaymentAnswer:
    try:
        response = payment_service_client().request(
            "POST",
            "/api/v1/payments/",
            acting_for=_acting_for(order),
            json={
                "order_id": order.id,
                "amount": str(order.total_amount),
                "currency": order.currency,
                "payment_method": order.payment_method,
            },
            headers={"Idempotency-Key": charge_idempotency_key(order)},
        )
    except ApplicationError as exc:  # UpstreamTimeout / UpstreamUnavailable
        return PaymentAnswer(Outcome.UNKNOWN, error=exc.code)
    if response.status_code == 400 and _error_code(response) == "invalid_payment_method":
        return PaymentAnswer(Outcome.INVALID_METHOD, failure_code="invalid_payment_method")
    if response.status_code not in (200, 201):
        return PaymentAnswer(Outcome.UNKNOWN, error=f"http_{response.status_code}")
    return _answer_about(order, _json_or_none(response))


def lookup(order: Order) -> PaymentAnswer:
    """Reconciliation: what the payment service knows of this order's charge."""
    try:
        response = payment_service_client().request(
            "GET",
            "/api/v1/payments/",
            acting_for=_acting_for(order),
            params={"idempotency_key": charge_idempotency_key(order)},
        )
    except ApplicationError as exc:
        return PaymentAnswer(Outcome.UNKNOWN, error=exc.code)
    body = _json_or_none(response)
    if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("results"), list):
        return PaymentAnswer(Outcome.UNKNOWN, error=f"http_{response.status_code}")
    if not body["results"]:
        return PaymentAnswer(Outcome.NOT_FOUND)
    return _answer_about(order, body["results"][0])


def refund(order: Order) -> PaymentAnswer:
    try:
        response = payment_service_client().request(
            "POST", f"/api/v1/payments/{order.payment_id}/refund", acting_for=_acting_for(order)
        )
    except ApplicationError as exc:
        return PaymentAnswer(Outcome.UNKNOWN, error=exc.code)
    if response.status_code != 200:
        return PaymentAnswer(Outcome.UNKNOWN, error=f"http_{response.status_code}")
    answer = _answer_about(order, _json_or_none(response))
    return answer if answer.outcome == Outcome.REFUNDED else PaymentAnswer(Outcome.UNKNOWN, error="not_refunded")


def _answer_about(order: Order, body: Any) -> PaymentAnswer:
    """Believe an answer only if it is about this very charge: a confused or misrouted answer must never
    confirm an order."""
    try:
        matches = (
            isinstance(body, dict)
            and str(body["order_id"]) == str(order.id)
            and Decimal(str(body["amount"])) == order.total_amount
            and body["currency"] == order.currency
            and body["status"] in (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.REFUNDED)
            and isinstance(body["id"], int)
            and (order.payment_id is None or body["id"] == order.payment_id)
        )
    except (KeyError, InvalidOperation, TypeError):
        matches = False
    if not matches:
        logger.error("payment answer does not match order %s: %r", order.id, body)
        return PaymentAnswer(Outcome.UNKNOWN, error="mismatched_answer")
    return PaymentAnswer(
        Outcome(body["status"]), payment_id=body["id"], failure_code=str(body.get("failure_code") or "")
    )


def _json_or_none(response: requests.Response) -> Any:
    if "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _error_code(response: requests.Response) -> str | None:
    body = _json_or_none(response)
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None
