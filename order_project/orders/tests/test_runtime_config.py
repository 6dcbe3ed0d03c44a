"""The user/payment clients take their timeouts and breaker thresholds from the config center, through
common.runtime_config, against a real config server on loopback: a new version applies without a restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses
from django.core.cache import cache

from common import runtime_config
from common.errors import UpstreamUnavailable
from common.events import Event
from common.runtime_config import MARKER_KEY
from common.testing import ConfigCenterStub
from orders.clients import payment_service_client, user_service_client
from orders.tests.conftest import USER_ID, user_url


@pytest.fixture
def config_server(settings: Any) -> Iterator[ConfigCenterStub]:
    server = ConfigCenterStub("orders")
    settings.CONFIG_CENTER_URL = server.url
    runtime_config.reset()  # a client for this URL (and the test's CONFIG_TTL) at the next use
    yield server
    server.stop()
    runtime_config.reset()
    cache.delete(MARKER_KEY)  # a config.changed event's announcement must not reach the next test


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def read_user(http: responses.RequestsMock) -> Any:
    """One real call through the user client; the timeout it was made with."""
    http.get(user_url(), json={"id": USER_ID}, status=200)
    user_service_client().request("GET", f"/api/v1/users/{USER_ID}/")
    return http.calls[-1].request.req_kwargs["timeout"]  # type: ignore[attr-defined]


def test_without_a_config_center_the_clients_use_the_settings(settings: Any) -> None:
    # the suite's default (order_project/conftest.py): a loopback port nothing listens on
    for client in (user_service_client(), payment_service_client()):
        assert client.timeout == (settings.SERVICE_CONNECT_TIMEOUT, settings.SERVICE_READ_TIMEOUT)
        assert client.breaker.max_failures == settings.SERVICE_BREAKER_FAILURES
        assert client.breaker.reset_timeout == settings.SERVICE_BREAKER_RESET_SECONDS


def test_a_new_version_applies_to_the_next_call_after_the_ttl(
    config_server: ConfigCenterStub, settings: Any, http: responses.RequestsMock
) -> None:
    settings.CONFIG_TTL = 0.2
    config_server.publish({"upstream.read_timeout": 7.0, "breaker.failures": 3})

    assert read_user(http) == (settings.SERVICE_CONNECT_TIMEOUT, 7.0)  # unset keys: the settings
    assert user_service_client().breaker.max_failures == 3

    version = config_server.publish(
        {
            "upstream.connect_timeout": 0.5,
            "upstream.read_timeout": 9.0,
            "breaker.failures": 2,
            "breaker.reset_timeout": 30.0,
        }
    )
    time.sleep(0.25)  # the TTL passes: the next read revalidates in the background, the call does not wait
    user_service_client().apply_runtime_config()
    wait_for(lambda: runtime_config.client().version == version)

    assert read_user(http) == (0.5, 9.0)  # the same cached client, no restart
    breaker = user_service_client().breaker
    assert (breaker.max_failures, breaker.reset_timeout) == (2, 30.0)
    assert payment_service_client().timeout == (0.5, 9.0)


def test_a_config_changed_event_applies_the_new_breaker_threshold_at_once(
    config_server: ConfigCenterStub, settings: Any, http: responses.RequestsMock
) -> None:
    settings.CONFIG_TTL = 600.0  # only the event can bring the new version within this test
    config_server.publish({"breaker.failures": 5})
    assert user_service_client().breaker.max_failures == 5

    version = config_server.publish({"breaker.failures": 2})
    runtime_config.on_config_changed(
        Event(type="config.changed", data={"service": "orders", "profile": "default", "version": version})
    )

    # two failing calls now open the breaker: the third is refused without reaching the user service
    http.get(user_url(), json={}, status=500)
    client = user_service_client()
    for _ in range(2):
        assert client.request("GET", f"/api/v1/users/{USER_ID}/").status_code == 500
    with pytest.raises(UpstreamUnavailable):
        client.request("GET", f"/api/v1/users/{USER_ID}/")
    assert len(http.calls) == 2


def test_an_event_for_another_service_changes_nothing(config_server: ConfigCenterStub, settings: Any) -> None:
    settings.CONFIG_TTL = 600.0
    config_server.publish({"upstream.read_timeout": 7.0})
    assert user_service_client().timeout[1] == 7.0

    config_server.publish({"upstream.read_timeout": 9.0})
    runtime_config.on_config_changed(Event(type="config.changed", data={"service": "users", "profile": "default"}))
    user_service_client().apply_runtime_config()

    assert user_service_client().timeout[1] == 7.0


def test_an_unreachable_center_leaves_the_last_good_values(
    config_server: ConfigCenterStub, settings: Any, http: responses.RequestsMock
) -> None:
    settings.CONFIG_TTL = 0.2
    config_server.publish({"upstream.read_timeout": 7.0, "breaker.failures": 3})
    assert read_user(http) == (settings.SERVICE_CONNECT_TIMEOUT, 7.0)

    config_server.stop()
    assert not runtime_config.client().refresh()  # what the background revalidation after the TTL meets

    assert read_user(http) == (settings.SERVICE_CONNECT_TIMEOUT, 7.0)
    assert user_service_client().breaker.max_failures == 3
