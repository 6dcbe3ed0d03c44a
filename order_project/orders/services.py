"""Placing and cancelling orders. The steps after the order is written — charge, confirm, compensate —
are the order saga's (:mod:`orders.saga`); these functions start it and hand it the customer's requests."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from catalog.models import Product
from catalog.selectors import product_map_active
from catalog.services import stock_reserve
from common.errors import UpstreamError
from common.events import publish_event
from common.idempotency import IdempotencyKeyReused, key_ttl
from common.internal_auth import Principal
from orders import saga
from orders.clients import user_service_client
from orders.errors import AccountUnavailable, PaymentOutcomePending
from orders.models import Order, OrderItem
from orders.selectors import order_get

logger = logging.getLogger(__name__)


def order_place(
    *,
    principal: Principal,
    items: Sequence[Mapping[str, int]],
    payment_method: str,
    idempotency_key: str | None = None,
) -> Order:
    """Place an order for ``principal`` with ``items`` (``product_id``, ``quantity``; validated for shape)
    and start its saga: the order is written with its stock held, then charged. Returns the order as the
    saga left it: ``confirmed``, ``cancelled`` (declined), or ``payment_pending`` when the payment service
    did not answer in time (the background finishes it). Out of stock: 409, nothing is written.

    With ``idempotency_key``, an order this user already placed with that key is resumed, not placed again
    (a retry of a request that died before answering)."""
    if principal.id is None:
        raise ValueError("Only a signed-in user can place an order.")
    if idempotency_key is not None:
        mine = Order.objects.filter(user_id=principal.id, idempotency_key=idempotency_key)
        # A key older than its time to live is free again, even before purge_idempotency_keys has run.
        mine.filter(created_at__lte=timezone.now() - key_ttl()).update(idempotency_key=None)
        earlier = mine.first()
        if earlier is not None:
            _check_same_request(earlier, items=items, payment_method=payment_method)
            return saga.advance(earlier.id)
    # Local checks first: a bad request must not cost a call to another service.
    products = _products_for_lines(items)
    _user_confirm_exists(principal=principal)

    try:
        with transaction.atomic():
            order = _order_create(
                user_id=principal.id,
                items=items,
                products=products,
                payment_method=payment_method,
                idempotency_key=idempotency_key,
            )
            stock_reserve(
                order_reference=order.reference, quantities={line["product_id"]: line["quantity"] for line in items}
            )
            saga.append_history(order, event="placed", from_status="", details={"stock": "held"})
            # In the same transaction as the order: the event goes out if and only if the order exists.
            publish_event("order.created", saga.order_data(order), aggregate_id=order.id)
    except IntegrityError:
        # A concurrent request with the same key placed it first.
        if idempotency_key is None:
            raise
        earlier = Order.objects.get(user_id=principal.id, idempotency_key=idempotency_key)
        _check_same_request(earlier, items=items, payment_method=payment_method)
        return saga.advance(earlier.id)
    # The request owns the first step (its lease was written with the order): charge now.
    return saga.advance(order.id, only_if_due=False)


def _check_same_request(earlier: Order, *, items: Sequence[Mapping[str, int]], payment_method: str) -> None:
    """An order found by its idempotency key is only this request's if it was placed with the same lines
    and payment method. The key's record normally tells a different body apart first (422), but it is
    freed after a 5xx answer, and the order may have been committed before that error: without this a
    different request with the key would be handed the earlier order as its own."""
    placed = sorted(earlier.items.values_list("product_id", "quantity"))
    asked = sorted((line["product_id"], line["quantity"]) for line in items)
    if placed != asked or earlier.payment_method != payment_method:
        raise IdempotencyKeyReused()


def order_cancel(*, principal: Principal, order_id: int) -> Order:
    """The customer cancels their order: a pending one is cancelled, a confirmed one refunded then
    cancelled (``refund_pending`` meanwhile, if the payment service is slow). Cancelling a cancelled order
    changes nothing. 404 for anyone else's order; 409 while the payment's outcome is unknown."""
    if principal.id is None:
        raise ValueError("Only a signed-in user can cancel an order.")
    for _ in range(3):  # the status may move under us (the saga runs concurrently): look again
        order = order_get(user_id=principal.id, order_id=order_id)
        if order.status == Order.Status.CANCELLED:
            return order
        if order.status == Order.Status.PAYMENT_PENDING:
            raise PaymentOutcomePending()
        if order.status == Order.Status.REFUND_PENDING:
            return saga.advance(order.id)
        moved = saga.request_cancellation(order)
        if moved is not None:
            return saga.advance(moved.id, only_if_due=False) if moved.status == Order.Status.REFUND_PENDING else moved
    return order_get(user_id=principal.id, order_id=order_id)


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
    *,
    user_id: int,
    items: Sequence[Mapping[str, int]],
    products: Mapping[int, Product],
    payment_method: str,
    idempotency_key: str | None,
) -> Order:
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
        payment_method=payment_method,
        idempotency_key=idempotency_key,
        # The placing request holds the first step; if it dies, the sweeper takes over when this passes.
        next_attempt_at=timezone.now() + saga.lease_duration(),
    )
    OrderItem.objects.bulk_create(
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
    return order
