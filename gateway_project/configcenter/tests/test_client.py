"""The services' client (common.runtime_config) against the real config center over HTTP."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache

from common import runtime_config
from common.events import Event
from common.runtime_config import MARKER_KEY, RuntimeConfig
from configcenter.services import save_version

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def module_client(settings: Any, live_server: Any) -> Iterator[None]:
    settings.CONFIG_CENTER_URL = live_server.url
    runtime_config.reset()
    yield
    runtime_config.reset()


def client_for(url: str, settings: Any, **options: Any) -> RuntimeConfig:
    return RuntimeConfig(url=url, service="users", profile="default", secret=settings.INTERNAL_AUTH_SECRET, **options)


def test_the_client_revalidates_with_its_etag_and_keeps_the_last_good_version_when_unreachable(
    live_server: Any, settings: Any, closed_port_url: str
) -> None:
    save_version(service="users", profile="default", values={"breaker.failures": 3}, author="ann")
    config = client_for(live_server.url, settings, ttl=60)

    # the center's value, and the caller's default (its setting) for a key the center does not have
    assert config.get("breaker.failures", 5) == 3
    assert config.get("feature.beta", False) is False

    assert config.refresh()
    assert (config.last_status, config.version) == (304, 1)  # unchanged: no body

    save_version(service="users", profile="default", values={"breaker.failures": 4}, author="bob")
    assert config.get("breaker.failures", 5) == 3  # within the TTL: from memory, no call
    assert config.refresh()
    assert (config.last_status, config.get("breaker.failures", 5)) == (200, 4)

    # the config center becomes unreachable: the last good version stays in use
    config.url = closed_port_url
    assert not config.refresh()
    assert config.last_status == 0
    assert config.get("breaker.failures", 5) == 4


def test_before_any_version_was_fetched_an_unreachable_center_leaves_the_defaults(
    settings: Any, closed_port_url: str
) -> None:
    config = client_for(closed_port_url, settings, timeout=0.5)

    assert config.get("breaker.failures", 5) == 5


def test_a_config_changed_event_refreshes_at_once_and_tells_the_other_processes(
    module_client: None, live_server: Any, settings: Any
) -> None:
    save_version(service="gateway", profile="default", values={"feature.beta": False}, author="ann")
    assert runtime_config.get("feature.beta") is False  # this process's client (service "gateway" here)
    other_process = RuntimeConfig(
        url=live_server.url, service="gateway", profile="default", secret=settings.INTERNAL_AUTH_SECRET, ttl=60
    )
    assert other_process.get("feature.beta") is False

    saved = save_version(service="gateway", profile="default", values={"feature.beta": True}, author="bob")
    runtime_config.on_config_changed(
        Event(type="config.changed", data={"service": "gateway", "profile": "default", "version": saved.version})
    )

    assert runtime_config.get("feature.beta") is True  # at once, though the TTL has not passed
    assert cache.get(MARKER_KEY) == saved.version
    # another process sees the announced version at its next marker check and refetches in the background
    other_process._marker_check_at = 0.0  # its once-a-second check is due
    other_process.get("feature.beta")
    deadline = time.monotonic() + 5
    while other_process.version != saved.version:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert other_process.get("feature.beta") is True


def test_an_event_for_another_service_or_profile_changes_nothing(module_client: None) -> None:
    runtime_config.get("feature.beta")
    config = runtime_config.client()
    expires = config._expires_at

    runtime_config.on_config_changed(Event(type="config.changed", data={"service": "users", "profile": "default"}))
    runtime_config.on_config_changed(Event(type="config.changed", data={"service": "gateway", "profile": "prod"}))

    assert config._expires_at == expires
