"""The services this one calls, built on first use (never at import time) and then reused for their
connection pools. Each resolves its instances through service discovery (``DISCOVERY_BACKEND``) and the
same balancer and circuit breaker as the gateway's (common.http.service_client: least-outstanding, active
health checks, passive ejection of an instance it cannot connect to; the breaker's state shared through
Redis in real mode).

Their timeouts and breaker thresholds come from the gateway's config center (common.runtime_config,
README "Config center"), the settings being the defaults: a new version applies from the next call, with
no restart and without losing the client's connection pool or its breaker's state."""

from functools import cache
from typing import Any

import requests
from django.conf import settings

from common import runtime_config
from common.http import ServiceClient, service_client


def runtime_timeouts() -> tuple[float, float]:
    """(connect timeout, read timeout) as configured now. Answered from runtime_config's memory: no network
    on the call path (it revalidates in the background after CONFIG_TTL; only a process's very first read
    waits for the config center, at most CONFIG_TIMEOUT)."""
    return (
        float(runtime_config.get("upstream.connect_timeout", settings.SERVICE_CONNECT_TIMEOUT)),
        float(runtime_config.get("upstream.read_timeout", settings.SERVICE_READ_TIMEOUT)),
    )


# The breaker reads its thresholds through these on each use, so a new version changes the breakers that
# exist, keeping their state (an open breaker stays open).
def breaker_failures() -> int:
    return int(runtime_config.get("breaker.failures", settings.SERVICE_BREAKER_FAILURES))


def breaker_reset_timeout() -> float:
    return float(runtime_config.get("breaker.reset_timeout", settings.SERVICE_BREAKER_RESET_SECONDS))


class RuntimeConfiguredClient(ServiceClient):
    """A ServiceClient that takes the current timeouts before each call. Updating the attribute in place
    (rather than rebuilding the cached client when the version changes) keeps the pooled connections;
    the assignment is atomic, so a concurrent call sees the old or new value."""

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        self.apply_runtime_config()
        return super().request(method, path, **kwargs)

    def apply_runtime_config(self) -> None:
        self.timeout = runtime_timeouts()


def _client(*, base_url: str, audience: str) -> RuntimeConfiguredClient:
    client = service_client(
        audience=audience,
        base_url=base_url,
        failures=breaker_failures,
        reset_timeout=breaker_reset_timeout,
        client_class=RuntimeConfiguredClient,
    )
    client.apply_runtime_config()
    return client


@cache
def user_service_client() -> RuntimeConfiguredClient:
    return _client(base_url=settings.USER_SERVICE_URL, audience="users")


@cache
def payment_service_client() -> RuntimeConfiguredClient:
    return _client(base_url=settings.PAYMENT_SERVICE_URL, audience="payments")
