import smtplib
from dataclasses import asdict
from typing import Any

import pytest
from django.core.mail import EmailMessage

from common.events import Event
from common.tasks import handle_event
from notifications.handlers import on_order_cancelled, on_order_confirmed, on_user_created
from notifications.models import SentEmail
from users.models import User

pytestmark = pytest.mark.django_db

FAILING_BACKEND = "notifications.tests.backends.UnreachableSmtpBackend"


def test_user_created_sends_one_welcome_email_and_records_it(
    user_created: Event, customer: User, mailoutbox: list[EmailMessage]
) -> None:
    on_user_created(user_created)

    [email] = mailoutbox
    assert email.to == ["ann@example.com"]
    assert email.subject == "Welcome to Shop, Ann Example!"
    assert "Ann Example" in email.body
    record = SentEmail.objects.get()
    assert str(record.event_id) == user_created.id
    assert record.kind == SentEmail.Kind.WELCOME
    assert record.user_id == customer.id
    assert record.to_email == "ann@example.com"
    assert record.subject == email.subject
    assert record.body == email.body


def test_redelivered_user_created_sends_nothing_more(user_created: Event, mailoutbox: list[EmailMessage]) -> None:
    on_user_created(user_created)
    on_user_created(user_created)

    assert len(mailoutbox) == 1
    assert SentEmail.objects.count() == 1


def test_order_confirmed_sends_confirmation_with_items_and_total(
    order_confirmed: Event, mailoutbox: list[EmailMessage]
) -> None:
    on_order_confirmed(order_confirmed)

    [email] = mailoutbox
    assert email.to == ["ann@example.com"]
    assert email.subject == "Your order #42 is confirmed"
    assert "#42" in email.body
    assert "- Coffee mug (SKU MUG-01): 2 x 19.99 USD = 39.98 USD" in email.body
    assert "- Green tea (SKU TEA-07): 1 x 9.99 USD = 9.99 USD" in email.body
    assert "Total: 49.97 USD" in email.body
    assert SentEmail.objects.get().kind == SentEmail.Kind.ORDER_CONFIRMATION


def test_redelivered_order_confirmed_sends_nothing_more(order_confirmed: Event, mailoutbox: list[EmailMessage]) -> None:
    on_order_confirmed(order_confirmed)
    on_order_confirmed(order_confirmed)

    assert len(mailoutbox) == 1


def test_one_event_may_send_one_email_of_each_kind(
    user_created: Event, order_confirmed: Event, mailoutbox: list[EmailMessage]
) -> None:
    # Given an order event that happens to share the welcome event's id
    same_id = Event(type=order_confirmed.type, data=order_confirmed.data, id=user_created.id)

    on_user_created(user_created)
    on_order_confirmed(same_id)

    assert len(mailoutbox) == 2


def test_event_for_unknown_user_sends_nothing(order_confirmed: Event, mailoutbox: list[EmailMessage]) -> None:
    User.objects.all().delete()

    on_order_confirmed(order_confirmed)

    assert mailoutbox == []
    assert not SentEmail.objects.exists()


def test_failed_send_leaves_no_record_so_a_retry_sends(
    user_created: Event, mailoutbox: list[EmailMessage], settings: Any
) -> None:
    settings.EMAIL_BACKEND = FAILING_BACKEND

    with pytest.raises(smtplib.SMTPException):
        on_user_created(user_created)

    assert not SentEmail.objects.exists()

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    on_user_created(user_created)

    assert len(mailoutbox) == 1
    assert SentEmail.objects.count() == 1


def test_name_with_line_break_still_makes_a_valid_subject(
    customer: User, user_created: Event, mailoutbox: list[EmailMessage]
) -> None:
    User.objects.filter(pk=customer.pk).update(name="Ann\nBcc: victim@example.com")

    on_user_created(user_created)

    assert mailoutbox[0].subject == "Welcome to Shop, Ann Bcc: victim@example.com!"


def test_events_handle_task_dispatches_to_the_configured_handler(
    order_confirmed: Event, mailoutbox: list[EmailMessage]
) -> None:
    result = handle_event.apply(kwargs={"event": asdict(order_confirmed)})

    assert result.successful()
    [email] = mailoutbox
    assert email.subject == "Your order #42 is confirmed"
    assert SentEmail.objects.filter(event_id=order_confirmed.id).exists()


def test_events_handle_task_ignores_event_types_without_handler(mailoutbox: list[EmailMessage]) -> None:
    event = Event(type="payment.captured", data={"payment_id": 1})

    result = handle_event.apply(kwargs={"event": asdict(event)})

    assert result.successful()
    assert mailoutbox == []


def test_a_refunded_cancellation_tells_the_customer_the_amount_refunded(
    order_cancelled_refunded: Event, mailoutbox: list[EmailMessage]
) -> None:
    on_order_cancelled(order_cancelled_refunded)

    [email] = mailoutbox
    assert email.to == ["ann@example.com"]
    assert email.subject == "Your order #42 is cancelled"
    assert "You cancelled it." in email.body
    assert "We refunded the 49.97 USD you paid" in email.body
    assert SentEmail.objects.get().kind == SentEmail.Kind.ORDER_CANCELLATION


def test_a_declined_order_is_cancelled_with_nothing_charged(
    order_cancelled_declined: Event, mailoutbox: list[EmailMessage]
) -> None:
    on_order_cancelled(order_cancelled_declined)

    [email] = mailoutbox
    assert "The payment was declined." in email.body
    assert "Nothing was charged." in email.body
    assert "refunded" not in email.body


def test_a_redelivered_cancellation_sends_nothing_more(
    order_cancelled_refunded: Event, mailoutbox: list[EmailMessage]
) -> None:
    on_order_cancelled(order_cancelled_refunded)
    on_order_cancelled(order_cancelled_refunded)

    assert len(mailoutbox) == 1


def test_a_cancellation_and_a_confirmation_of_one_order_are_two_emails(
    order_confirmed: Event, order_cancelled_refunded: Event, mailoutbox: list[EmailMessage]
) -> None:
    on_order_confirmed(order_confirmed)
    on_order_cancelled(order_cancelled_refunded)

    assert [email.subject for email in mailoutbox] == ["Your order #42 is confirmed", "Your order #42 is cancelled"]
