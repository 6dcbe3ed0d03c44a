"""The services this one calls, built on first use (never at import time) and then reused for their
connection pools. Each resolves its instances through service discovery (``DISCOVERY_BACKEND``), round
robin with a passive ejection of an instance it cannot connect to, behind a circuit breaker.

Their timeouts and breaker thresholds come from the gateway's config center (common.runtime_config,
README "Config center"), the settings being the defaults: a new version applies from the next call, with
no restart and without losing the client's connection pool or its breaker's state."""

from functools import cache
from typing import Any

import requests
from django.conf import settings

from common import discovery, runtime_config
from common.http import CircuitBreaker, ServiceClient


def runtime_values() -> tuple[float, float, int, float]:
    """(connect timeout, read timeout, breaker failures, breaker reset seconds) as configured now. Answered
    from runtime_config's memory: no network on the call path (it revalidates in the background after
    CONFIG_TTL; only a process's very first read waits for the config center, at most CONFIG_TIMEOUT)."""
    return (
        float(runtime_config.get("upstream.connect_timeout", settings.SERVICE_CONNECT_TIMEOUT)),
        float(runtime_config.get("upstream.read_timeout", settings.SERVICE_READ_TIMEOUT)),
        int(runtime_config.get("breaker.failures", settings.SERVICE_BREAKER_FAILURES)),
        float(runtime_config.get("breaker.reset_timeout", settings.SERVICE_BREAKER_RESET_SECONDS)),
    )


class RuntimeConfiguredClient(ServiceClient):
    """A ServiceClient that takes the current runtime values before each call. Updating the attributes in
    place (rather than rebuilding the cached client when the version changes) keeps an open breaker open
    and the pooled connections; each assignment is atomic, so a concurrent call sees the old or new value."""

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        self.apply_runtime_config()
        return super().request(method, path, **kwargs)

    def apply_runtime_config(self) -> None:
        connect_timeout, read_timeout, failures, reset_seconds = runtime_values()
        self.timeout = (connect_timeout, read_timeout)
        if self.breaker is not None:
            self.breaker.failures = failures
            self.breaker.reset_seconds = reset_seconds


def _client(*, base_url: str, audience: str) -> RuntimeConfiguredClient:
    registry = discovery.make_registry(
        backend=settings.DISCOVERY_BACKEND,
        configured={audience: base_url},
        etcd_url=settings.ETCD_URL,
        etcd_prefix=settings.ETCD_PREFIX,
        dns_server=settings.DISCOVERY_DNS_SERVER,
        timeout=settings.SERVICE_CONNECT_TIMEOUT,
    )
    instances = discovery.ServiceInstances(registry, audience, fallback=base_url)
    client = RuntimeConfiguredClient(
        base_url=discovery.parse_urls(base_url)[0],
        caller=settings.SERVICE_NAME,
        audience=audience,
        secret=settings.INTERNAL_AUTH_SECRET,
        instances=discovery.DiscoveredBaseUrl(instances.urls, refresh_seconds=settings.DISCOVERY_REFRESH_SECONDS),
        breaker=CircuitBreaker(),
    )
    client.apply_runtime_config()
    return client


@cache
def user_service_client() -> RuntimeConfiguredClient:
    return _client(base_url=settings.USER_SERVICE_URL, audience="users")


@cache
def payment_service_client() -> RuntimeConfiguredClient:
    return _client(base_url=settings.PAYMENT_SERVICE_URL, audience="payments")
