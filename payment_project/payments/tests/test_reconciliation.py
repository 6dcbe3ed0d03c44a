"""What the order saga needs from the payment service beyond a charge: finding a charge by its idempotency
key, refunding it exactly once, and the Idempotency-Key protocol's 409 and lock takeover."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from common.testing import assertion_headers
from messaging.models import OutboxEvent
from payments.models import IdempotencyKey, Payment
from payments.tests.factories import PaymentFactory

pytestmark = pytest.mark.django_db

CHARGE_URL = "/api/v1/payments/"
BODY = {"order_id": 42, "amount": "19.99", "currency": "USD", "payment_method": "tok_visa"}


def as_orders(user_id: int = 7, caller: str = "orders") -> dict[str, str]:
    return assertion_headers(user_id=user_id, caller=caller)


def lookup(client: Client, key: str, **who: Any) -> Any:
    return client.get(CHARGE_URL, {"idempotency_key": key}, headers=as_orders(**who))


def refund(client: Client, payment_id: int, **who: Any) -> Any:
    return client.post(f"/api/v1/payments/{payment_id}/refund", headers=as_orders(**who))


# --- lookup ----------------------------------------------------------------------------------------------


def test_a_lookup_finds_the_charge_made_with_the_key(client: Client) -> None:
    charged = client.post(
        CHARGE_URL, BODY, content_type="application/json", headers={**as_orders(), "Idempotency-Key": "order-x-charge"}
    )

    response = lookup(client, "order-x-charge")

    assert response.status_code == 200
    assert response.json() == {"results": [charged.json()]}


def test_a_lookup_of_a_key_never_charged_is_an_empty_list(client: Client) -> None:
    response = lookup(client, "order-never-charge")

    assert response.status_code == 200
    assert response.json() == {"results": []}


def test_a_lookup_does_not_show_another_users_charge(client: Client) -> None:
    PaymentFactory(user_id=7, idempotency_key="order-x-charge")

    assert lookup(client, "order-x-charge", user_id=8).json() == {"results": []}


@pytest.mark.parametrize("caller", ["gateway", "users"])
def test_only_the_order_service_may_look_up_charges(client: Client, caller: str) -> None:
    PaymentFactory(user_id=7, idempotency_key="order-x-charge")

    response = lookup(client, "order-x-charge", caller=caller)

    assert response.status_code == 403


# --- refunds ---------------------------------------------------------------------------------------------


def test_a_refund_marks_the_payment_refunded_and_announces_it_once(client: Client) -> None:
    payment = PaymentFactory(user_id=7)

    first = refund(client, payment.id)
    again = refund(client, payment.id)

    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["status"] == again.json()["status"] == "refunded"
    payment.refresh_from_db()
    assert payment.status == Payment.Status.REFUNDED
    assert payment.refunded_at is not None
    assert list(OutboxEvent.objects.values_list("type", flat=True)) == ["payment.refunded"]


def test_a_declined_payment_cannot_be_refunded(client: Client) -> None:
    payment = PaymentFactory(user_id=7, declined=True)

    response = refund(client, payment.id)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "payment_not_refundable"
    assert not OutboxEvent.objects.exists()


def test_another_users_payment_cannot_be_refunded(client: Client) -> None:
    payment = PaymentFactory(user_id=7)

    response = refund(client, payment.id, user_id=8)

    assert response.status_code == 404
    payment.refresh_from_db()
    assert payment.status == Payment.Status.SUCCEEDED


@pytest.mark.parametrize("caller", ["gateway", "users"])
def test_only_the_order_service_may_refund(client: Client, caller: str) -> None:
    payment = PaymentFactory(user_id=7)

    assert refund(client, payment.id, caller=caller).status_code == 403
    payment.refresh_from_db()
    assert payment.status == Payment.Status.SUCCEEDED


# --- the Idempotency-Key protocol ------------------------------------------------------------------------


def charge(client: Client, key: str, body: dict[str, Any] | None = None) -> Any:
    return client.post(
        CHARGE_URL, body or BODY, content_type="application/json", headers={**as_orders(), "Idempotency-Key": key}
    )


def test_a_key_whose_first_request_is_still_running_is_refused_with_409(client: Client) -> None:
    first = charge(client, "k")
    # As if the first request were still running: its key is locked and has no response yet.
    IdempotencyKey.objects.filter(key="k").update(locked_at=timezone.now(), response_status=None)

    response = charge(client, "k")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_in_use"
    assert first.status_code == 201
    assert Payment.objects.count() == 1


def test_a_key_held_by_a_request_that_died_is_taken_over_and_never_charges_twice(client: Client) -> None:
    charge(client, "k")
    # The first request died after charging but before answering, longer ago than the lock timeout.
    IdempotencyKey.objects.filter(key="k").update(locked_at=timezone.now() - timedelta(minutes=5), response_status=None)

    response = charge(client, "k")

    assert response.status_code == 200  # the payment found by its key: no first response was kept
    assert response.headers["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1


def test_another_body_with_the_key_of_a_payment_made_before_a_server_error_is_refused_and_binds_nothing(
    client: Client,
) -> None:
    charge(client, "k")
    # As after a 5xx answered once the payment was committed: the key's record is freed, the payment keeps it.
    IdempotencyKey.objects.all().delete()

    other = charge(client, "k", {**BODY, "amount": "25.00"})
    same = charge(client, "k")

    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # The refused request never owned the key: the same body as the payment's still finds it.
    assert same.status_code == 200
    assert same.headers["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1


def test_expired_keys_are_purged(client: Client) -> None:
    charge(client, "old")
    charge(client, "new")
    IdempotencyKey.objects.filter(key="old").update(expires_at=timezone.now() - timedelta(seconds=1))

    call_command("purge_idempotency_keys")

    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["new"]


def test_keys_are_kept_for_at_least_a_day(client: Client) -> None:
    charge(client, "k")

    assert IdempotencyKey.objects.get().expires_at >= timezone.now() + timedelta(hours=23, minutes=59)
