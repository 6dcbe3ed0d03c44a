from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from common.errors import PermissionDenied
from common.idempotency import IdempotencyKeyReused, InvalidIdempotencyKey
from common.internal_auth import Principal
from payments.errors import InvalidPaymentMethod
from payments.models import Payment
from payments.services import payment_charge
from payments.tests.factories import PaymentFactory

pytestmark = pytest.mark.django_db

ORDERS = Principal(id=7, is_staff=False, caller="orders")


def charge(**overrides: Any) -> tuple[Payment, bool]:
    arguments: dict[str, Any] = {
        "principal": ORDERS,
        "order_id": 42,
        "amount": Decimal("19.99"),
        "currency": "USD",
        "payment_method": "tok_visa",
        "idempotency_key": None,
    }
    return payment_charge(**{**arguments, **overrides})


@pytest.mark.parametrize("token", ["tok_visa", "tok_mastercard", "tok_amex"])
def test_charge_with_a_succeeding_token_records_a_succeeded_payment(token: str) -> None:
    payment, created = charge(payment_method=token)

    assert created is True
    payment.refresh_from_db()
    assert payment.status == Payment.Status.SUCCEEDED
    assert payment.failure_code == ""
    assert (payment.order_id, payment.user_id, payment.amount, payment.currency) == (42, 7, Decimal("19.99"), "USD")
    assert (payment.payment_method, payment.caller) == (token, "orders")


@pytest.mark.parametrize(
    ("token", "failure_code"),
    [("tok_chargeDeclined", "card_declined"), ("tok_chargeDeclinedInsufficientFunds", "insufficient_funds")],
)
def test_charge_with_a_declining_token_records_a_failed_payment(token: str, failure_code: str) -> None:
    payment, created = charge(payment_method=token)

    assert created is True
    payment.refresh_from_db()
    assert payment.status == Payment.Status.FAILED
    assert payment.failure_code == failure_code


@pytest.mark.parametrize("token", ["tok_unknown", "TOK_VISA", "tok_visa ", "4242424242424242"])
def test_charge_with_an_unknown_token_is_refused_and_writes_nothing(token: str) -> None:
    with pytest.raises(InvalidPaymentMethod) as raised:
        charge(payment_method=token)

    assert raised.value.details == {"payment_method": ["Unknown payment method."]}
    assert not Payment.objects.exists()


def test_charge_for_nobody_is_refused() -> None:
    with pytest.raises(PermissionDenied):
        charge(principal=Principal(id=None, is_staff=False, caller="orders"))

    assert not Payment.objects.exists()


@pytest.mark.parametrize("key", ["", "has space", "tab\tkey", "naïve", "x" * 256])
def test_charge_with_a_malformed_idempotency_key_is_refused(key: str) -> None:
    with pytest.raises(InvalidIdempotencyKey):
        charge(idempotency_key=key)

    assert not Payment.objects.exists()


def test_idempotency_key_of_255_visible_characters_is_accepted() -> None:
    payment, created = charge(idempotency_key="~" * 255)

    assert created is True
    assert payment.idempotency_key == "~" * 255


def test_repeating_a_charge_with_the_same_key_returns_the_first_payment() -> None:
    first, _ = charge(idempotency_key="order-42-attempt-1")

    again, created = charge(idempotency_key="order-42-attempt-1")

    assert created is False
    assert again.id == first.id
    assert Payment.objects.count() == 1


def test_replay_compares_amounts_as_numbers() -> None:
    first, _ = charge(amount=Decimal("10.5"), idempotency_key="k")

    again, created = charge(amount=Decimal("10.50"), idempotency_key="k")

    assert (again.id, created) == (first.id, False)


@pytest.mark.parametrize(
    "difference",
    [
        {"order_id": 43},
        {"amount": Decimal("20.00")},
        {"currency": "EUR"},
        {"payment_method": "tok_mastercard"},
        {"principal": Principal(id=8, is_staff=False, caller="orders")},
    ],
)
def test_reusing_a_key_for_a_different_request_is_refused(difference: dict[str, Any]) -> None:
    charge(idempotency_key="k")

    with pytest.raises(IdempotencyKeyReused):
        charge(idempotency_key="k", **difference)

    assert Payment.objects.count() == 1


def test_idempotency_keys_of_different_callers_are_independent() -> None:
    first, _ = charge(idempotency_key="k")

    other, created = charge(idempotency_key="k", principal=Principal(id=7, is_staff=False, caller="billing"))

    assert created is True
    assert other.id != first.id


def test_without_a_key_every_charge_is_a_new_payment() -> None:
    charge()
    charge()

    assert Payment.objects.count() == 2


def _when_payments_are_first_read(action: Callable[[], None]) -> Callable[..., Any]:
    """A database execute wrapper that runs ``action`` right after the service's first read of payments,
    i.e. between its idempotency check and its insert: what a concurrent request would do."""
    state = {"done": False}

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if not state["done"] and sql.lstrip().upper().startswith("SELECT") and "payments_payment" in sql:
            state["done"] = True
            action()
        return result

    return wrapper


def test_losing_the_insert_race_to_the_same_request_replays_the_winner() -> None:
    # Given another request with the same key commits its payment after our idempotency check
    winner: list[Payment] = []
    concurrent = _when_payments_are_first_read(
        lambda: winner.append(PaymentFactory(order_id=42, user_id=7, idempotency_key="k", caller="orders"))
    )

    # When our insert hits the unique constraint
    with connection.execute_wrapper(concurrent):
        payment, created = charge(idempotency_key="k")

    # Then the winner's payment is returned as a replay, and the database is still usable
    assert created is False
    assert payment.id == winner[0].id
    assert Payment.objects.count() == 1


def test_losing_the_insert_race_to_a_different_request_reports_key_reuse() -> None:
    concurrent = _when_payments_are_first_read(
        lambda: PaymentFactory(order_id=99, user_id=7, idempotency_key="k", caller="orders")
    )

    with connection.execute_wrapper(concurrent), pytest.raises(IdempotencyKeyReused):
        charge(idempotency_key="k")

    assert Payment.objects.count() == 1
