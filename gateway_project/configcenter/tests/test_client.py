"""The services' client (common.runtime_config) against the real config center over HTTP."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common import runtime_config
from common.events import Event
from common.runtime_config import RuntimeConfig, marker_key, marker_store
from configcenter.services import save_version

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(autouse=True)
def marker_dir(settings: Any, tmp_path: Path) -> None:
    # embedded mode's marker store, in the test's own folder
    settings.CONFIG_MARKER_DIR = str(tmp_path / "config-marker")


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
    config.stop()


def test_before_any_version_was_fetched_an_unreachable_center_leaves_the_defaults(
    settings: Any, closed_port_url: str
) -> None:
    config = client_for(closed_port_url, settings, timeout=0.5)

    assert config.get("breaker.failures", 5) == 5


def other_process(url: str, settings: Any, **options: Any) -> RuntimeConfig:
    """A client as another process of the gateway "service" has it: its own memory, the same marker store
    (files in CONFIG_MARKER_DIR, as in embedded mode), a watcher stepping every 50 ms."""
    return RuntimeConfig(
        url=url,
        service="gateway",
        profile="default",
        secret=settings.INTERNAL_AUTH_SECRET,
        marker_interval=0.05,
        store=marker_store(),
        **options,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_config_changed_event_refreshes_at_once_and_reaches_the_other_processes_through_the_marker(
    module_client: None, live_server: Any, settings: Any
) -> None:
    save_version(service="gateway", profile="default", values={"feature.beta": False}, author="ann")
    assert runtime_config.get("feature.beta") is False  # this process's client (service "gateway" here)
    other = other_process(live_server.url, settings, ttl=600)  # only the announcement can bring a change
    assert other.get("feature.beta") is False

    saved = save_version(service="gateway", profile="default", values={"feature.beta": True}, author="bob")
    runtime_config.on_config_changed(
        Event(type="config.changed", data={"service": "gateway", "profile": "default", "version": saved.version})
    )

    assert runtime_config.get("feature.beta") is True  # at once in the process that handled the event
    assert marker_store().get(marker_key("default")) == saved.version
    # the other process's watcher sees the marker move and refetches; its requests never wait for that
    wait_for(lambda: other.version == saved.version)
    assert other.get("feature.beta") is True
    other.stop()


def test_a_process_that_never_read_its_configuration_only_announces(
    module_client: None, live_server: Any, settings: Any
) -> None:
    # the order and payment services' event workers: they pass the news on and fetch nothing themselves
    runtime_config.on_config_changed(
        Event(type="config.changed", data={"service": "gateway", "profile": "default", "version": 7})
    )

    assert marker_store().get(marker_key("default")) == 7
    assert not runtime_config.client().started
    assert runtime_config.client().last_status == 0  # no fetch


def test_an_announcement_of_the_version_held_or_a_stale_marker_costs_at_most_one_fetch(
    live_server: Any, settings: Any
) -> None:
    saved = save_version(service="gateway", profile="default", values={"feature.beta": True}, author="ann")
    store = marker_store()
    store.set(marker_key("default"), 40, timeout=None)  # left by a config center whose database was reset
    config = other_process(live_server.url, settings, ttl=600)
    config.stop()  # the test steps the watcher itself

    assert config.get("feature.beta") is True
    assert not config.poll()  # the marker it found at start is not news

    store.set(marker_key("default"), saved.version, timeout=None)
    assert not config.poll()  # announces the version it already holds: nothing to fetch

    saved = save_version(service="gateway", profile="default", values={"feature.beta": False}, author="bob")
    config.announce(saved.version)
    assert config.poll()
    assert (config.last_status, config.get("feature.beta")) == (200, False)
    assert not config.poll()


def test_without_an_announcement_the_ttl_brings_the_new_version(live_server: Any, settings: Any) -> None:
    save_version(service="gateway", profile="default", values={"feature.beta": True}, author="ann")
    config = other_process(live_server.url, settings, ttl=0.2)
    assert config.get("feature.beta") is True

    save_version(service="gateway", profile="default", values={"feature.beta": False}, author="bob")

    wait_for(lambda: config.get("feature.beta") is False)  # the backstop: the event worker was down
    config.stop()


def test_a_process_forked_after_reading_its_configuration_keeps_it_current(live_server: Any, settings: Any) -> None:
    # given a process that read its configuration (a preloading server's master, say), then forks
    save_version(service="gateway", profile="default", values={"feature.beta": True}, author="ann")
    config = other_process(live_server.url, settings, ttl=0.2)
    assert config.get("feature.beta") is True
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its parent's watcher thread did not come along
        outcome = "timeout"
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if config.get("feature.beta") is False:
                    watchers = [t for t in threading.enumerate() if t.name == "runtime-config-watch"]
                    outcome = f"refreshed, {len(watchers)} watcher"
                    break
                time.sleep(0.05)
        finally:
            os.write(write_end, outcome.encode())
            os._exit(0)

    # when a new version is saved
    save_version(service="gateway", profile="default", values={"feature.beta": False}, author="bob")

    # then the child, with a watcher of its own, gets it
    os.close(write_end)
    os.waitpid(child, 0)
    assert os.read(read_end, 100).decode() == "refreshed, 1 watcher"
    os.close(read_end)
    config.stop()


def test_a_marker_store_that_cannot_be_written_fails_the_event_so_it_is_retried(
    module_client: None, settings: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings.CONFIG_MARKER_DIR = str(blocker / "marker")
    runtime_config.reset()

    with pytest.raises(NotADirectoryError):  # an OSError: the task retries it, then dead-letters it
        runtime_config.on_config_changed(
            Event(type="config.changed", data={"service": "gateway", "profile": "default", "version": 2})
        )


@pytest.mark.parametrize("version", [None, "2", -1, True])
def test_an_event_without_a_valid_version_announces_nothing(module_client: None, version: Any) -> None:
    runtime_config.on_config_changed(
        Event(type="config.changed", data={"service": "gateway", "profile": "default", "version": version})
    )

    assert marker_store().get(marker_key("default")) is None


def test_an_event_for_another_service_or_profile_changes_nothing(module_client: None) -> None:
    runtime_config.get("feature.beta")
    config = runtime_config.client()
    expires = config._expires_at

    runtime_config.on_config_changed(
        Event(type="config.changed", data={"service": "users", "profile": "default", "version": 3})
    )
    runtime_config.on_config_changed(
        Event(type="config.changed", data={"service": "gateway", "profile": "prod", "version": 3})
    )

    assert config._expires_at == expires
    assert marker_store().get(marker_key("default")) is None
