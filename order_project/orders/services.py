"""Placing orders: price them from the catalog, check the customer with the user service, charge them
through the payment service, and announce the outcome as events once it is committed."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

import requests
from django.db import transaction
from rest_framework.exceptions import ValidationError

from catalog.models import Product
from catalog.selectors import product_map_active
from common.errors import UpstreamError
from common.events import publish_event
from common.internal_auth import Principal
from orders.clients import payment_service_client, user_service_client
from orders.errors import AccountUnavailable
from orders.models import Order, OrderItem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaymentResult:
    id: int
    status: str
    failure_code: str


def order_place(*, principal: Principal, items: Sequence[Mapping[str, int]], payment_method: str) -> Order:
    """Place an order for ``principal`` with ``items`` (``product_id``, ``quantity``; validated for shape)
    and pay it with ``payment_method``. A declined payment still places the order, as cancelled; an
    unknown payment method or any failure leaves nothing behind."""
    if principal.id is None:
        raise ValueError("Only a signed-in user can place an order.")
    # Local checks first: a bad request must not cost a call to another service.
    products = _products_for_lines(items)
    _user_confirm_exists(principal=principal)

    with transaction.atomic():
        order, order_items = _order_create(user_id=principal.id, items=items, products=products)
        # The charge runs inside the transaction for now, so that an unknown payment method (or a failed
        # call) rolls the order back and leaves nothing behind. That holds a database transaction open
        # across an HTTP call, and a charge that succeeded just before a crash or timeout here is lost
        # from our side: the order saga (a later issue) moves the charge out of the transaction, with a
        # persisted order state machine and an outbox for the call and the events.
        payment = _payment_charge(principal=principal, order=order, payment_method=payment_method)
        order.payment_id = payment.id
        order.payment_status = payment.status
        order.payment_failure_code = payment.failure_code
        order.status = (
            Order.Status.CONFIRMED if payment.status == Order.PaymentStatus.SUCCEEDED else Order.Status.CANCELLED
        )
        order.save(update_fields=["payment_id", "payment_status", "payment_failure_code", "status", "updated_at"])
        # robust: the order and the charge are committed by then; a broker failure must not turn this
        # request into a 500 that invites the client to order (and pay) again. It is logged instead.
        transaction.on_commit(partial(_publish_order_events, order, order_items), robust=True)
    return order


def _products_for_lines(items: Sequence[Mapping[str, int]]) -> dict[int, Product]:
    """The active products the lines name, or a validation error pointing at each bad line."""
    products = product_map_active(product_ids=[line["product_id"] for line in items])
    # An inactive product is as unknown here as it is to GET /products/<id>/.
    line_errors = [{} if line["product_id"] in products else {"product_id": ["Unknown product."]} for line in items]
    if any(line_errors):
        raise ValidationError({"items": line_errors})
    if len({product.currency for product in products.values()}) > 1:
        raise ValidationError({"items": ["All products of an order must be in the same currency."]})
    return products


def _user_confirm_exists(*, principal: Principal) -> None:
    response = user_service_client().request("GET", f"/api/v1/users/{principal.id}/", acting_for=principal)
    if response.status_code == 404:
        raise AccountUnavailable()
    if not 200 <= response.status_code < 300:
        raise UpstreamError(details={"service": "users", "status": response.status_code})


def _order_create(
    *, user_id: int, items: Sequence[Mapping[str, int]], products: Mapping[int, Product]
) -> tuple[Order, list[OrderItem]]:
    lines = []
    for line in items:
        product = products[line["product_id"]]
        # Prices come from the catalog, never from the client.
        lines.append((product, line["quantity"], product.price * line["quantity"]))
    order = Order.objects.create(
        user_id=user_id,
        status=Order.Status.PENDING,
        total_amount=sum((line_total for _, _, line_total in lines), Decimal("0.00")),
        currency=next(iter(products.values())).currency,
    )
    order_items = OrderItem.objects.bulk_create(
        OrderItem(
            order=order,
            product=product,
            sku=product.sku,
            name=product.name,
            quantity=quantity,
            unit_price=product.price,
            line_total=line_total,
        )
        for product, quantity, line_total in lines
    )
    return order, order_items


def _payment_charge(*, principal: Principal, order: Order, payment_method: str) -> PaymentResult:
    response = payment_service_client().request(
        "POST",
        "/api/v1/payments/",
        acting_for=principal,
        json={
            "order_id": order.id,
            "amount": str(order.total_amount),
            "currency": order.currency,
            "payment_method": payment_method,
        },
        # One charge per order, however often this call is repeated.
        headers={"Idempotency-Key": f"order-{order.reference}-charge"},
    )
    if response.status_code == 400 and _error_code(response) == "invalid_payment_method":
        raise ValidationError({"payment_method": ["Unknown payment method."]})
    if response.status_code not in (200, 201):  # 200: the payment service replayed an earlier charge
        raise UpstreamError(details={"service": "payments", "status": response.status_code})
    return _payment_result(_json_or_none(response), order=order)


def _payment_result(body: Any, *, order: Order) -> PaymentResult:
    """Check that the payment service answered about this very charge: a confused or misrouted answer must
    never confirm an order."""
    if not isinstance(body, dict):
        raise UpstreamError("The payment service sent an unreadable answer.", details={"service": "payments"})
    try:
        matches = (
            str(body["order_id"]) == str(order.id)
            and Decimal(str(body["amount"])) == order.total_amount
            and body["currency"] == order.currency
            and body["status"] in (Order.PaymentStatus.SUCCEEDED, Order.PaymentStatus.FAILED)
            and isinstance(body["id"], int)
        )
    except (KeyError, InvalidOperation):
        matches = False
    if not matches:
        logger.error("payment answer does not match order %s: %r", order.id, body)
        raise UpstreamError("The payment service answered about another charge.", details={"service": "payments"})
    return PaymentResult(id=body["id"], status=body["status"], failure_code=str(body.get("failure_code") or ""))


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


def _money(amount: Decimal) -> str:
    return str(amount)


def _order_created_data(order: Order, order_items: Sequence[OrderItem]) -> dict[str, Any]:
    return {
        "order_id": order.id,
        "user_id": order.user_id,
        "total_amount": _money(order.total_amount),
        "currency": order.currency,
        "items": [
            {
                "product_id": item.product_id,
                "sku": item.sku,
                "name": item.name,
                "quantity": item.quantity,
                "unit_price": _money(item.unit_price),
                "line_total": _money(item.line_total),
            }
            for item in order_items
        ],
    }


def _publish_order_events(order: Order, order_items: Sequence[OrderItem]) -> None:
    created = _order_created_data(order, order_items)
    publish_event("order.created", created)
    if order.status == Order.Status.CONFIRMED:
        publish_event("order.confirmed", {**created, "status": Order.Status.CONFIRMED.value})
    else:
        publish_event(
            "order.cancelled",
            {"order_id": order.id, "user_id": order.user_id, "reason": order.payment_failure_code},
        )
