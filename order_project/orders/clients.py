"""The services this one calls, built on first use (never at import time) and then reused for their
connection pools."""

from functools import cache

from django.conf import settings

from common.http import ServiceClient


def _client(*, base_url: str, audience: str) -> ServiceClient:
    return ServiceClient(
        base_url=base_url,
        caller=settings.SERVICE_NAME,
        audience=audience,
        secret=settings.INTERNAL_AUTH_SECRET,
        connect_timeout=settings.SERVICE_CONNECT_TIMEOUT,
        read_timeout=settings.SERVICE_READ_TIMEOUT,
    )


@cache
def user_service_client() -> ServiceClient:
    return _client(base_url=settings.USER_SERVICE_URL, audience="users")


@cache
def payment_service_client() -> ServiceClient:
    return _client(base_url=settings.PAYMENT_SERVICE_URL, audience="payments")
