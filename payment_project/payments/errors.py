from common.errors import ApplicationError


class InvalidPaymentMethod(ApplicationError):
    status_code = 400
    code = "invalid_payment_method"
    message = "Unknown payment method."

    def __init__(self) -> None:
        super().__init__(details={"payment_method": [self.message]})


class PaymentNotRefundable(ApplicationError):
    status_code = 409
    code = "payment_not_refundable"
    message = "Only a succeeded payment can be refunded."
