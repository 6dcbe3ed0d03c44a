"""The payment methods this service accepts: test tokens in the spirit of Stripe's, each with a fixed
outcome. There is no real card network behind them; swapping this table for a processor client is the seam
for that."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

from django.conf import settings

from common import runtime_config
from payments.models import Payment


@dataclass(frozen=True)
class ChargeOutcome:
    status: str
    failure_code: str = ""


_SUCCEEDS = ChargeOutcome(status=Payment.Status.SUCCEEDED)

TEST_PAYMENT_METHODS = MappingProxyType(
    {
        "tok_visa": _SUCCEEDS,
        "tok_mastercard": _SUCCEEDS,
        "tok_amex": _SUCCEEDS,
        "tok_chargeDeclined": ChargeOutcome(
            status=Payment.Status.FAILED, failure_code=Payment.FailureCode.CARD_DECLINED
        ),
        "tok_chargeDeclinedInsufficientFunds": ChargeOutcome(
            status=Payment.Status.FAILED, failure_code=Payment.FailureCode.INSUFFICIENT_FUNDS
        ),
    }
)


OVER_LIMIT = ChargeOutcome(status=Payment.Status.FAILED, failure_code=Payment.FailureCode.AMOUNT_TOO_LARGE)


def charge_outcome(payment_method: str, amount: Decimal) -> ChargeOutcome | None:
    """What charging ``amount`` to ``payment_method`` does, or None for a method we do not know. A charge
    over the limit is declined before the method is tried, as a processor's risk check would."""
    outcome = TEST_PAYMENT_METHODS.get(payment_method)
    if outcome is None:
        return None
    limit = max_charge_amount()
    return OVER_LIMIT if limit is not None and amount > limit else outcome


def max_charge_amount() -> Decimal | None:
    """The largest single charge accepted now: the config center's ``payments.max_charge_amount`` (from
    memory, kept current without a restart, see common.runtime_config), else ``PAYMENT_MAX_CHARGE_AMOUNT``;
    None for no limit."""
    value = runtime_config.get("payments.max_charge_amount")
    if value is None:
        return settings.PAYMENT_MAX_CHARGE_AMOUNT
    try:
        # str(): a JSON number arrives as a float, and Decimal(0.1) would carry its binary error.
        limit = Decimal(str(value)).quantize(Decimal("0.01"))
    except (InvalidOperation, ValueError, TypeError):
        # The config center validates at save time; a value stored under an older schema must not stop charges.
        return settings.PAYMENT_MAX_CHARGE_AMOUNT
    # NaN (refused at save time, but it may come from an older schema) would make every comparison raise.
    return limit if limit.is_finite() else settings.PAYMENT_MAX_CHARGE_AMOUNT
