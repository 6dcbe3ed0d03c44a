from __future__ import annotations

import logging
import uuid
from typing import Any

from django.core.mail import EmailMessage
from django.db import transaction
from django.template.loader import render_to_string

from notifications.models import SentEmail
from users.models import User

logger = logging.getLogger(__name__)


def email_send_for_event(
    *, event_id: str | uuid.UUID, kind: str, user: User, subject: str, body: str
) -> SentEmail | None:
    """Send ``user`` an email because of an event, at most once per (event, kind).

    Returns the record of the email, or None when this event's email of this kind was already sent
    (the broker delivers at least once, so a redelivered event is normal).
    """
    with transaction.atomic():
        # get_or_create inserts in a savepoint; if a concurrent delivery of the same event inserted first,
        # the unique constraint makes our insert wait for its transaction and then fail with IntegrityError,
        # which get_or_create turns into "found, not created". Should that delivery roll back instead
        # (its send failed), our insert goes through and we send.
        sent, created = SentEmail.objects.get_or_create(
            event_id=event_id,
            kind=kind,
            defaults={"user_id": user.id, "to_email": user.email, "subject": subject, "body": body},
        )
        if not created:
            logger.info("%s email for event %s already sent; skipped", kind, event_id)
            return None
        # Sending inside the transaction: if it raises, the row rolls back and a retry sends again.
        # The window left is a send that succeeded followed by a failed commit: the retry then sends a
        # second copy. That is the at-least-once cost; no mail protocol lets us do better.
        EmailMessage(subject=subject, body=body, to=[user.email]).send()
    logger.info("sent %s email %s for event %s", kind, sent.id, event_id)
    return sent


def welcome_email_send(*, event_id: str, user_id: int) -> SentEmail | None:
    user = _recipient(user_id=user_id, event_id=event_id)
    if user is None:
        return None
    return email_send_for_event(
        event_id=event_id,
        kind=SentEmail.Kind.WELCOME,
        user=user,
        subject=f"Welcome to Shop, {_one_line(user.name)}!",
        body=render_to_string("notifications/welcome.txt", {"user": user}),
    )


def order_confirmation_email_send(*, event_id: str, order: dict[str, Any]) -> SentEmail | None:
    """``order`` is the data of an ``order.confirmed`` event (decimal amounts as strings)."""
    user = _recipient(user_id=int(order["user_id"]), event_id=event_id)
    if user is None:
        return None
    order_id = int(order["order_id"])
    return email_send_for_event(
        event_id=event_id,
        kind=SentEmail.Kind.ORDER_CONFIRMATION,
        user=user,
        subject=f"Your order #{order_id} is confirmed",
        body=render_to_string(
            "notifications/order_confirmation.txt",
            {
                "user": user,
                "order_id": order_id,
                "items": order["items"],
                "total_amount": order["total_amount"],
                "currency": order["currency"],
            },
        ),
    )


# Why an order was cancelled, as the customer reads it (the ``reason`` of an ``order.cancelled`` event).
CANCELLATION_REASONS = {
    "customer_cancelled": "You cancelled it.",
    "payment_declined": "The payment was declined.",
    "invalid_payment_method": "The payment method was not accepted.",
}


def order_cancellation_email_send(*, event_id: str, order: dict[str, Any]) -> SentEmail | None:
    """``order`` is the data of an ``order.cancelled`` event: the order plus ``reason`` and ``refunded``."""
    user = _recipient(user_id=int(order["user_id"]), event_id=event_id)
    if user is None:
        return None
    order_id = int(order["order_id"])
    reason = order.get("reason") or ""
    return email_send_for_event(
        event_id=event_id,
        kind=SentEmail.Kind.ORDER_CANCELLATION,
        user=user,
        subject=f"Your order #{order_id} is cancelled",
        body=render_to_string(
            "notifications/order_cancellation.txt",
            {
                "user": user,
                "order_id": order_id,
                "reason": CANCELLATION_REASONS.get(reason, "It could not be completed."),
                "refunded": bool(order.get("refunded")),
                "total_amount": order["total_amount"],
                "currency": order["currency"],
            },
        ),
    )


def _recipient(*, user_id: int, event_id: str) -> User | None:
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        logger.warning("user %s of event %s does not exist; no email sent", user_id, event_id)
    return user


def _one_line(text: str) -> str:
    # A line break in a header would make the mail library refuse the message.
    return " ".join(text.split())
