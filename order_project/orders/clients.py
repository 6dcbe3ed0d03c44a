"""The services this one calls, built on first use (never at import time) and then reused for their
connection pools. Each resolves its instances through service discovery (``DISCOVERY_BACKEND``), round
robin with a passive ejection of an instance it cannot connect to, behind a circuit breaker."""

from functools import cache

from django.conf import settings

from common import discovery
from common.http import CircuitBreaker, ServiceClient


def _client(*, base_url: str, audience: str) -> ServiceClient:
    registry = discovery.make_registry(
        backend=settings.DISCOVERY_BACKEND,
        configured={audience: base_url},
        etcd_url=settings.ETCD_URL,
        etcd_prefix=settings.ETCD_PREFIX,
        dns_server=settings.DISCOVERY_DNS_SERVER,
        timeout=settings.SERVICE_CONNECT_TIMEOUT,
    )
    instances = discovery.ServiceInstances(registry, audience, fallback=base_url)
    return ServiceClient(
        base_url=discovery.parse_urls(base_url)[0],
        caller=settings.SERVICE_NAME,
        audience=audience,
        secret=settings.INTERNAL_AUTH_SECRET,
        connect_timeout=settings.SERVICE_CONNECT_TIMEOUT,
        read_timeout=settings.SERVICE_READ_TIMEOUT,
        instances=discovery.DiscoveredBaseUrl(instances.urls, refresh_seconds=settings.DISCOVERY_REFRESH_SECONDS),
        breaker=CircuitBreaker(
            failures=settings.SERVICE_BREAKER_FAILURES, reset_seconds=settings.SERVICE_BREAKER_RESET_SECONDS
        ),
    )


@cache
def user_service_client() -> ServiceClient:
    return _client(base_url=settings.USER_SERVICE_URL, audience="users")


@cache
def payment_service_client() -> ServiceClient:
    return _client(base_url=settings.PAYMENT_SERVICE_URL, audience="payments")
