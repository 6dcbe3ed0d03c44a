from decimal import Decimal

import factory

from payments.models import Payment


class PaymentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Payment

    order_id = factory.Sequence(lambda n: 1000 + n)
    user_id = factory.Sequence(lambda n: 500 + n)
    amount = Decimal("19.99")
    currency = "USD"
    status = Payment.Status.SUCCEEDED
    payment_method = "tok_visa"
    failure_code = ""
    idempotency_key = None
    caller = "orders"

    class Params:
        declined = factory.Trait(
            status=Payment.Status.FAILED,
            payment_method="tok_chargeDeclined",
            failure_code=Payment.FailureCode.CARD_DECLINED,
        )
