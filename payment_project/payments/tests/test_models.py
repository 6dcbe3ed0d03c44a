from decimal import Decimal

import pytest
from django.db import IntegrityError

from payments.models import Payment
from payments.tests.factories import PaymentFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("amount", [Decimal("0.00"), Decimal("-1.00")])
def test_amount_must_be_positive(amount: Decimal) -> None:
    with pytest.raises(IntegrityError):
        PaymentFactory(amount=amount)


def test_failed_payment_must_name_its_failure() -> None:
    with pytest.raises(IntegrityError):
        PaymentFactory(status=Payment.Status.FAILED, failure_code="")


def test_succeeded_payment_cannot_carry_a_failure_code() -> None:
    with pytest.raises(IntegrityError):
        PaymentFactory(status=Payment.Status.SUCCEEDED, failure_code=Payment.FailureCode.CARD_DECLINED)


def test_idempotency_key_is_unique_per_caller() -> None:
    PaymentFactory(caller="orders", idempotency_key="key-1")

    with pytest.raises(IntegrityError):
        PaymentFactory(caller="orders", idempotency_key="key-1")


def test_same_idempotency_key_may_be_used_by_different_callers() -> None:
    PaymentFactory(caller="orders", idempotency_key="key-1")
    PaymentFactory(caller="billing", idempotency_key="key-1")

    assert Payment.objects.filter(idempotency_key="key-1").count() == 2


def test_payments_without_idempotency_key_do_not_collide() -> None:
    PaymentFactory(caller="orders", idempotency_key=None)
    PaymentFactory(caller="orders", idempotency_key=None)

    assert Payment.objects.filter(idempotency_key__isnull=True).count() == 2


def test_declined_factory_trait_builds_a_valid_failed_payment() -> None:
    payment = PaymentFactory(declined=True)

    assert payment.status == Payment.Status.FAILED
    assert payment.failure_code == Payment.FailureCode.CARD_DECLINED
