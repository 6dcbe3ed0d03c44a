"""Event handlers named in ``settings.EVENT_HANDLERS``; the worker's ``events.handle`` task calls them."""

from common.events import Event
from notifications.services import (
    order_cancellation_email_send,
    order_confirmation_email_send,
    welcome_email_send,
)


def on_user_created(event: Event) -> None:
    welcome_email_send(event_id=event.id, user_id=int(event.data["user_id"]))


def on_order_confirmed(event: Event) -> None:
    order_confirmation_email_send(event_id=event.id, order=event.data)


def on_order_cancelled(event: Event) -> None:
    order_cancellation_email_send(event_id=event.id, order=event.data)
