from rest_framework.exceptions import Throttled

from common.errors import ApplicationError, Conflict


class EmailTaken(Conflict):
    code = "email_taken"
    message = "An account with this email address already exists."


class PasswordRejected(ApplicationError):
    """The password failed Django's validators; rendered like a serializer error on ``password``."""

    status_code = 400
    code = "validation_error"
    message = "The request has invalid fields."


class InvalidCredentials(ApplicationError):
    # One error for unknown email, wrong password and inactive account: the response must not tell
    # which addresses have accounts.
    status_code = 401
    code = "invalid_credentials"
    message = "The email or password is incorrect."


class TooManyAttempts(Throttled):
    """Too many failed sign-ins for one account. A DRF ``Throttled``, so the response carries
    ``Retry-After``; the code says which limit was hit (``rate_limited`` is the per-address one)."""

    default_code = "too_many_attempts"
    default_detail = "Too many failed sign-in attempts for this account."


class RefreshTokenError(ApplicationError):
    """A refresh token we will not honour; the code says why (see ``users.services.auth_token_refresh``)."""

    status_code = 401
    code = "invalid_token"
    message = "The refresh token is invalid."
