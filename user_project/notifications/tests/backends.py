import smtplib
from collections.abc import Sequence

from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.backends.locmem import EmailBackend as LocmemEmailBackend


class UnreachableSmtpBackend(BaseEmailBackend):
    """Fails like an SMTP server that dropped the connection."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")


# How many sends FlakySmtpBackend still fails before it delivers. Module-level, so a test can set it
# before a worker thread builds its own backend instance; tests reset it with ``flaky_smtp_fails_next``.
_flaky_failures_left = 0


def flaky_smtp_fails_next(count: int) -> None:
    global _flaky_failures_left
    _flaky_failures_left = count


class FlakySmtpBackend(LocmemEmailBackend):
    """Drops the connection on the next sends ``flaky_smtp_fails_next`` asked for, then delivers to the test
    outbox (``django.core.mail.outbox``) like the locmem backend: a mail server that is briefly away."""

    def send_messages(self, messages: Sequence[EmailMessage]) -> int:
        global _flaky_failures_left
        if _flaky_failures_left > 0:
            _flaky_failures_left -= 1
            raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
        return super().send_messages(messages)
