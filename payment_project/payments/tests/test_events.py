"""Events go through the real publishing code to a real (filesystem) broker in a temporary folder; each
test binds a ``payment.*`` queue to the events exchange as a consuming service's queue would be."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from django.test import Client

from common.events import HANDLE_TASK_NAME, publish_event
from common.testing import EventBroker, assertion_headers
from messaging.models import OutboxEvent
from payments.models import Payment

pytestmark = pytest.mark.django_db

BODY = {"order_id": 42, "amount": "19.99", "currency": "USD", "payment_method": "tok_visa"}


def post_charge(client: Client, body: dict[str, Any], **headers: str) -> Any:
    return client.post(
        "/api/v1/payments/",
        body,
        content_type="application/json",
        headers={**assertion_headers(user_id=7, caller="orders"), **headers},
    )


def test_successful_charge_records_payment_succeeded_in_the_outbox_and_the_relay_sends_it(
    client: Client, event_broker: EventBroker
) -> None:
    payment_events = event_broker.subscribe("payment.*")
    response = post_charge(client, BODY)
    # Written with the payment, in its transaction (the outbox); the relay (drain) sends it.
    assert OutboxEvent.objects.get().type == "payment.succeeded"

    payment = Payment.objects.get()
    [published] = payment_events()
    event = published.event
    assert published.task == HANDLE_TASK_NAME
    assert response.status_code == 201
    assert event["type"] == "payment.succeeded"
    assert event["source"] == "payments"
    assert event["version"] == 1
    assert event["request_id"]
    assert event["aggregate_id"] == str(payment.id)
    assert OutboxEvent.objects.get().sent_at is not None
    assert event["data"] == {
        "payment_id": payment.id,
        "order_id": 42,
        "user_id": 7,
        "amount": "19.99",
        "currency": "USD",
        "status": "succeeded",
        "failure_code": None,
    }


@pytest.mark.parametrize(
    ("token", "failure_code"),
    [("tok_chargeDeclined", "card_declined"), ("tok_chargeDeclinedInsufficientFunds", "insufficient_funds")],
)
def test_declined_charge_publishes_payment_failed(
    client: Client, event_broker: EventBroker, django_capture_on_commit_callbacks: Any, token: str, failure_code: str
) -> None:
    payment_events = event_broker.subscribe("payment.*")
    with django_capture_on_commit_callbacks(execute=True):
        post_charge(client, {**BODY, "payment_method": token, "amount": "5"})

    [published] = payment_events()
    event = published.event
    assert published.task == HANDLE_TASK_NAME
    assert event["type"] == "payment.failed"
    assert event["data"]["status"] == "failed"
    assert event["data"]["failure_code"] == failure_code
    assert event["data"]["amount"] == "5.00"


@pytest.mark.parametrize(
    "body",
    [
        {**BODY, "payment_method": "tok_bogus"},
        {**BODY, "amount": "0"},
        {**BODY, "currency": "usd"},
    ],
)
def test_refused_charge_publishes_nothing(
    client: Client, event_broker: EventBroker, django_capture_on_commit_callbacks: Any, body: dict[str, Any]
) -> None:
    payment_events = event_broker.subscribe("payment.*")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_charge(client, body)

    assert response.status_code == 400
    assert callbacks == []
    assert payment_events() == []
    assert not OutboxEvent.objects.exists()


def test_replayed_charge_publishes_nothing_again(
    client: Client, event_broker: EventBroker, django_capture_on_commit_callbacks: Any
) -> None:
    payment_events = event_broker.subscribe("payment.*")
    with django_capture_on_commit_callbacks(execute=True):
        post_charge(client, BODY, **{"Idempotency-Key": "k"})
    assert len(payment_events()) == 1

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = post_charge(client, BODY, **{"Idempotency-Key": "k"})

    assert response.headers["Idempotent-Replayed"] == "true"
    assert callbacks == []
    assert payment_events() == []


def test_events_of_other_types_do_not_reach_a_payment_queue(event_broker: EventBroker) -> None:
    payment_events = event_broker.subscribe("payment.*")

    with transaction.atomic():
        publish_event("order.confirmed", {"order_id": 1})

    assert payment_events() == []
