from common.errors import ApplicationError


class AccountUnavailable(ApplicationError):
    """The caller's access token is valid, but the user service no longer knows the account (deleted or
    deactivated since the token was issued)."""

    status_code = 403
    code = "account_unavailable"
    message = "Your account is not available for placing orders."
