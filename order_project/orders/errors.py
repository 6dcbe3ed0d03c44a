from common.errors import ApplicationError


class AccountUnavailable(ApplicationError):
    """The caller's access token is valid, but the user service no longer knows the account (deleted or
    deactivated since the token was issued)."""

    status_code = 403
    code = "account_unavailable"
    message = "Your account is not available for placing orders."


class PaymentOutcomePending(ApplicationError):
    """Until the payment service has answered, nobody knows whether there is a charge to refund."""

    status_code = 409
    code = "payment_outcome_pending"
    message = "The payment of this order is still being settled; try cancelling again shortly."
