"""The payment methods this service accepts: test tokens in the spirit of Stripe's, each with a fixed
outcome. There is no real card network behind them; swapping this table for a processor client is the seam
for that."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

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


def charge_outcome(payment_method: str) -> ChargeOutcome | None:
    """What charging ``payment_method`` does, or None for a method we do not know."""
    return TEST_PAYMENT_METHODS.get(payment_method)
