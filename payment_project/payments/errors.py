from common.errors import ApplicationError


class InvalidPaymentMethod(ApplicationError):
    status_code = 400
    code = "invalid_payment_method"
    message = "Unknown payment method."

    def __init__(self) -> None:
        super().__init__(details={"payment_method": [self.message]})


class InvalidIdempotencyKey(ApplicationError):
    status_code = 400
    code = "invalid_idempotency_key"
    message = "The Idempotency-Key header must be 1 to 255 visible ASCII characters."


class IdempotencyKeyReused(ApplicationError):
    status_code = 422
    code = "idempotency_key_reused"
    message = "This Idempotency-Key was already used for a different request."


class PaymentNotRefundable(ApplicationError):
    status_code = 409
    code = "payment_not_refundable"
    message = "Only a succeeded payment can be refunded."
