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
