from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from common.errors import PermissionDenied
from common.events import publish_event
from common.idempotency import IdempotencyKeyReused, InvalidIdempotencyKey
from common.internal_auth import Principal
from payments.errors import InvalidPaymentMethod, PaymentNotRefundable
from payments.methods import charge_outcome
from payments.models import Payment
from payments.selectors import payment_get

# 1 to 255 printable ASCII characters, no spaces or control characters (what Stripe accepts, give or take).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def payment_charge(
    *,
    principal: Principal,
    order_id: int,
    amount: Decimal,
    currency: str,
    payment_method: str,
    idempotency_key: str | None,
) -> tuple[Payment, bool]:
    """Charge ``amount`` for ``order_id`` on behalf of the principal's user; return the payment and whether it
    was created now (False: an earlier request with the same idempotency key is replayed).

    A declined charge is still a created payment, with status ``failed``. The calling service retries safely
    by sending the same ``idempotency_key``: the same request returns the first payment, a different one is
    refused.
    """
    if principal.id is None:
        raise PermissionDenied("A payment is always made on behalf of a user.")
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise InvalidIdempotencyKey()
    outcome = charge_outcome(payment_method, amount)
    if outcome is None:
        raise InvalidPaymentMethod()

    request = {
        "order_id": order_id,
        "user_id": principal.id,
        "amount": amount,
        "currency": currency,
        "payment_method": payment_method,
    }
    if idempotency_key is not None:
        earlier = _payment_with_key(caller=principal.caller, idempotency_key=idempotency_key)
        if earlier is not None:
            return _replayed(earlier, request), False

    try:
        # A savepoint, so that losing the race below leaves the caller's transaction usable.
        with transaction.atomic():
            payment = Payment.objects.create(
                **request,
                status=outcome.status,
                failure_code=outcome.failure_code,
                idempotency_key=idempotency_key,
                caller=principal.caller,
            )
            # In the payment's own transaction (the outbox): the event commits with the payment.
            _publish_outcome(payment)
    except IntegrityError:
        # A concurrent request with the same key inserted first (between our read and our insert): the unique
        # constraint stopped us, and its payment is now committed and visible.
        earlier = (
            _payment_with_key(caller=principal.caller, idempotency_key=idempotency_key)
            if idempotency_key is not None
            else None
        )
        if earlier is None:
            raise
        return _replayed(earlier, request), False

    return payment, True


def _payment_with_key(*, caller: str, idempotency_key: str) -> Payment | None:
    return Payment.objects.filter(caller=caller, idempotency_key=idempotency_key).first()


def _replayed(earlier: Payment, request: dict[str, Any]) -> Payment:
    if any(getattr(earlier, field) != value for field, value in request.items()):
        raise IdempotencyKeyReused()
    return earlier


def _publish_outcome(payment: Payment) -> None:
    event_type = "payment.succeeded" if payment.status == Payment.Status.SUCCEEDED else "payment.failed"
    publish_event(
        event_type,
        {
            "payment_id": payment.id,
            "order_id": payment.order_id,
            "user_id": payment.user_id,
            "amount": f"{payment.amount:.2f}",
            "currency": payment.currency,
            "status": payment.status,
            "failure_code": payment.failure_code or None,
        },
        aggregate_id=payment.id,
    )


def payment_refund(*, principal: Principal, payment_id: int) -> Payment:
    """Refund a succeeded payment in full; refunding a refunded one again changes nothing (the caller may
    retry a refund whose answer it lost). A declined payment has nothing to refund (409). Only the
    principal's own payments: anyone else's is not found."""
    payment = payment_get(principal=principal, payment_id=payment_id)
    with transaction.atomic():
        # Conditional: of two concurrent refunds exactly one changes the status and announces it.
        refunded = Payment.objects.filter(id=payment.id, status=Payment.Status.SUCCEEDED).update(
            status=Payment.Status.REFUNDED, refunded_at=timezone.now()
        )
        payment.refresh_from_db()
        if refunded:
            # In the refund's own transaction (the outbox): the event commits with the refund.
            publish_event(
                "payment.refunded",
                {
                    "payment_id": payment.id,
                    "order_id": payment.order_id,
                    "user_id": payment.user_id,
                    "amount": f"{payment.amount:.2f}",
                    "currency": payment.currency,
                    "status": payment.status,
                },
                aggregate_id=payment.id,
            )
    if payment.status != Payment.Status.REFUNDED:
        raise PaymentNotRefundable()
    return payment
