"""The order saga: a persisted state machine that takes an order from placed to confirmed or cancelled.

States (``Order.status``) and steps::

    (validate user: before the order exists, nothing to compensate)
    pending ──────────────► payment_pending ──────────► confirmed ──(customer cancels)──► refund_pending
      │   stock held,          │   charge asked for,        charged                         │ refund asked for
      │   order.created        │   outcome unknown until    order.confirmed                 ▼
      │                        │   the payment service says                            cancelled
      │                        ├─► cancelled (declined / unknown method): stock released  (customer_cancelled,
      └─(customer cancels)─────┴──► cancelled (customer_cancelled): stock released         refunded, stock
                                                                                           released)

- **pending**: the order, its lines, its stock reservation, a history entry and ``order.created`` are
  written in one transaction. The charge has not been asked for.
- **payment_pending**: set (and committed) *before* the payment service is called, outside any database
  transaction. The call carries ``Idempotency-Key: order-<reference>-charge``, so however often it is
  repeated — by the request, a retry, the background — it is one charge. A timeout, refused connection,
  5xx or unreadable answer leaves the order here (the charge may or may not have happened). The background
  (:func:`sweep`, looped by ``manage.py saga_sweeper``) then *reconciles*: it asks the payment service for
  the charge with that key, and applies what it finds, or charges again with the same key if there is none.
- **confirmed**: only on an answer from the payment service that this very order was charged (and a
  database constraint refuses ``confirmed`` without ``payment_status = succeeded``).
- **refund_pending**: the customer cancelled a confirmed order; the refund is asked for (idempotent at the
  payment service) until it is done.
- **cancelled**, with ``cancellation_reason``: ``payment_declined``, ``invalid_payment_method`` or
  ``customer_cancelled`` (after the refund, if there was a charge).

Exactly once: every transition is a conditional update (``WHERE status = <from>``); only the caller whose
update matched appends the history entry, runs the compensation (releasing stock, itself conditional per
reservation) and publishes the event, all in the same transaction. A redelivered or concurrent step finds
the status already moved and does nothing. ``next_attempt_at`` is a lease as well as a schedule: a step
that calls the payment service first moves it forward with a conditional update, so the request and the
background never call it for the same order at the same time.

A ``payment_pending`` order cannot be cancelled by the customer (409): until the payment service has
answered, nobody knows whether there is a charge to refund.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from catalog.services import stock_release
from common.events import publish_event
from orders import payments
from orders.models import Order, OrderHistoryEntry
from orders.payments import Outcome, PaymentAnswer

logger = logging.getLogger(__name__)

# States the saga still has work in; the sweeper looks at these.
ACTIVE_STATUSES = (Order.Status.PENDING, Order.Status.PAYMENT_PENDING, Order.Status.REFUND_PENDING)


def lease_duration() -> timedelta:
    return timedelta(seconds=settings.ORDER_SAGA_LEASE_SECONDS)


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff between attempts at the payment service, capped."""
    base = settings.ORDER_SAGA_RETRY_BASE_SECONDS
    return timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), settings.ORDER_SAGA_RETRY_MAX_SECONDS))


# transitions ---------------------------------------------------------------------------------------------


def append_history(order: Order, *, event: str, from_status: str, details: dict[str, Any] | None = None) -> None:
    OrderHistoryEntry.objects.create(
        order=order, event=event, from_status=from_status, to_status=order.status, details=details or {}
    )


def _transition(
    order_id: int, *, from_status: str, to_status: str, event: str, details: dict[str, Any] | None = None, **fields: Any
) -> Order | None:
    """Move the order from ``from_status`` to ``to_status`` if it is still there, recording it in the
    history; return the updated order, or None if someone else moved it first. Call inside a transaction
    that also holds the step's compensation and event."""
    won = Order.objects.filter(id=order_id, status=from_status).update(
        status=to_status, updated_at=timezone.now(), **fields
    )
    if not won:
        return None
    order = Order.objects.get(id=order_id)
    append_history(order, event=event, from_status=from_status, details=details)
    return order


def _take_lease(order: Order) -> Order | None:
    """Own the order's next step for a lease period (conditional on nobody else having taken it since we
    read it); the step must finish or reschedule before the lease ends."""
    until = timezone.now() + lease_duration()
    won = Order.objects.filter(id=order.id, status=order.status, next_attempt_at=order.next_attempt_at).update(
        next_attempt_at=until
    )
    if not won:
        return None
    order.next_attempt_at = until
    return order


# the steps -----------------------------------------------------------------------------------------------


def advance(order_id: int, *, only_if_due: bool = True) -> Order:
    """Take the order one step further if a step is due (or, with ``only_if_due=False``, if the caller has
    just scheduled it itself); return it as it is afterwards. Safe to call any number of times, from
    anywhere, concurrently."""
    order = Order.objects.get(id=order_id)
    if order.status not in ACTIVE_STATUSES or order.next_attempt_at is None:
        return order
    if only_if_due and order.next_attempt_at > timezone.now():
        return order
    leased = _take_lease(order)
    if leased is None:
        return Order.objects.get(id=order_id)
    if leased.status == Order.Status.PENDING:
        _request_charge(leased)
    elif leased.status == Order.Status.PAYMENT_PENDING:
        _reconcile_charge(leased)
    else:
        _request_refund(leased)
    return Order.objects.get(id=order_id)


def _request_charge(order: Order) -> None:
    with transaction.atomic():
        moved = _transition(
            order.id,
            from_status=Order.Status.PENDING,
            to_status=Order.Status.PAYMENT_PENDING,
            event="payment_requested",
            payment_attempts=F("payment_attempts") + 1,
        )
    if moved is None:
        return
    # Committed before the call: from here on a charge may exist, so a crash during the call leaves a
    # payment_pending order, which the sweeper reconciles (asks first) instead of simply charging.
    _apply_charge_answer(moved, payments.charge(moved))


def _reconcile_charge(order: Order) -> None:
    Order.objects.filter(id=order.id).update(payment_attempts=F("payment_attempts") + 1)
    order.refresh_from_db()
    answer = payments.lookup(order)
    if answer.outcome == Outcome.NOT_FOUND:
        # No charge exists: ask for it (again). The same key makes a concurrent or late first attempt and
        # this one the same charge.
        answer = payments.charge(order)
    _apply_charge_answer(order, answer)


def _apply_charge_answer(order: Order, answer: PaymentAnswer) -> None:
    if answer.outcome == Outcome.SUCCEEDED:
        with transaction.atomic():
            confirmed = _transition(
                order.id,
                from_status=Order.Status.PAYMENT_PENDING,
                to_status=Order.Status.CONFIRMED,
                event="confirmed",
                details={"payment_id": answer.payment_id},
                payment_id=answer.payment_id,
                payment_status=Order.PaymentStatus.SUCCEEDED,
                next_attempt_at=None,
            )
            if confirmed is not None:
                publish_event(
                    "order.confirmed",
                    {**order_data(confirmed), "status": confirmed.status},
                    aggregate_id=confirmed.id,
                )
    elif answer.outcome in (Outcome.FAILED, Outcome.INVALID_METHOD):
        declined = answer.outcome == Outcome.FAILED
        _cancel(
            order,
            from_status=Order.Status.PAYMENT_PENDING,
            reason=(Order.CancellationReason.PAYMENT_DECLINED if declined else Order.CancellationReason.INVALID_METHOD),
            details={"payment_id": answer.payment_id, "failure_code": answer.failure_code},
            payment_id=answer.payment_id,
            payment_status=Order.PaymentStatus.FAILED if declined else Order.PaymentStatus.NONE,
            payment_failure_code=answer.failure_code,
        )
    else:
        # Unknown (or an answer that makes no sense for a charge, such as "refunded"): try again later.
        _retry_later(order, event="payment_unknown", error=answer.error or answer.outcome)


def _request_refund(order: Order) -> None:
    Order.objects.filter(id=order.id).update(payment_attempts=F("payment_attempts") + 1)
    order.refresh_from_db()
    answer = payments.refund(order)
    if answer.outcome != Outcome.REFUNDED:
        _retry_later(order, event="refund_unknown", error=answer.error or answer.outcome)
        return
    _cancel(
        order,
        from_status=Order.Status.REFUND_PENDING,
        reason=Order.CancellationReason.CUSTOMER_CANCELLED,
        details={"payment_id": order.payment_id, "refunded": True},
        payment_status=Order.PaymentStatus.REFUNDED,
    )


def _cancel(order: Order, *, from_status: str, reason: str, details: dict[str, Any], **fields: Any) -> Order | None:
    """Cancel the order and run the compensations of the steps done so far (the stock; a charge is refunded
    before this, in refund_pending), once."""
    with transaction.atomic():
        cancelled = _transition(
            order.id,
            from_status=from_status,
            to_status=Order.Status.CANCELLED,
            event="cancelled",
            details={"reason": reason, **details},
            cancellation_reason=reason,
            next_attempt_at=None,
            **fields,
        )
        if cancelled is None:
            return None
        released = stock_release(order_reference=cancelled.reference)
        if released:
            append_history(cancelled, event="stock_released", from_status=cancelled.status, details={"lines": released})
        publish_event("order.cancelled", order_cancelled_data(cancelled), aggregate_id=cancelled.id)
    return cancelled


def _retry_later(order: Order, *, event: str, error: str) -> None:
    with transaction.atomic():
        # Conditional on still holding our lease: if it ran out and another step took over, leave it be.
        rescheduled = Order.objects.filter(
            id=order.id, status=order.status, next_attempt_at=order.next_attempt_at
        ).update(next_attempt_at=timezone.now() + retry_delay(order.payment_attempts))
        if rescheduled:
            append_history(
                order,
                event=event,
                from_status=order.status,
                details={"attempt": order.payment_attempts, "error": error},
            )
    logger.warning("order %s: %s (%s), attempt %s; retrying later", order.id, event, error, order.payment_attempts)


# customer actions ----------------------------------------------------------------------------------------


def request_cancellation(order: Order) -> Order | None:
    """The customer's cancel: a pending order is cancelled at once, a confirmed one goes to refund_pending
    (the caller then advances it to ask for the refund). Return the order as moved, or None if its status
    changed under us (the caller re-reads and decides again)."""
    if order.status == Order.Status.PENDING:
        return _cancel(
            order, from_status=Order.Status.PENDING, reason=Order.CancellationReason.CUSTOMER_CANCELLED, details={}
        )
    with transaction.atomic():
        return _transition(
            order.id,
            from_status=Order.Status.CONFIRMED,
            to_status=Order.Status.REFUND_PENDING,
            event="refund_requested",
            details={"payment_id": order.payment_id},
            next_attempt_at=timezone.now() + lease_duration(),
            payment_attempts=0,
        )


# the background ------------------------------------------------------------------------------------------


def sweep(*, limit: int = 100, budget_seconds: float = 30.0, now: datetime | None = None) -> int:
    """Advance every order whose next step is due (orders left payment_pending by a slow or unreachable
    payment service, refunds not yet done, steps of a crashed process); return how many were looked at.
    Bounded in count and time so that one run stays well inside the task time limit."""
    started = time.monotonic()
    due = list(
        Order.objects.filter(status__in=ACTIVE_STATUSES, next_attempt_at__lte=now or timezone.now())
        .order_by("next_attempt_at")
        .values_list("id", flat=True)[:limit]
    )
    for count, order_id in enumerate(due, start=1):
        try:
            advance(order_id)
        except Exception:  # one broken order must not stop the others; it is retried next run
            logger.exception("order saga step failed for order %s", order_id)
        if time.monotonic() - started > budget_seconds:
            return count
    return len(due)


# event payloads ------------------------------------------------------------------------------------------


def order_data(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.id,
        "user_id": order.user_id,
        "total_amount": str(order.total_amount),
        "currency": order.currency,
        "items": [
            {
                "product_id": item.product_id,
                "sku": item.sku,
                "name": item.name,
                "quantity": item.quantity,
                "unit_price": str(item.unit_price),
                "line_total": str(item.line_total),
            }
            for item in order.items.order_by("id")
        ],
    }


def order_cancelled_data(order: Order) -> dict[str, Any]:
    return {
        **order_data(order),
        "status": order.status,
        "reason": order.cancellation_reason,
        "failure_code": order.payment_failure_code or None,
        "refunded": order.payment_status == Order.PaymentStatus.REFUNDED,
    }
