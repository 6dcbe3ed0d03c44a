"""The config center's upstream timeouts and the stale-fallback flag, applied to the next request without a
restart: a version is saved as an operator would (save_version) and loaded as a worker's poller does
(``runtime.refresh()``; the poller thread itself is tested in test_config_center_workers.py), through the
real view against real upstream servers on loopback."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client

from common.testing import unanswered_port
from configcenter import runtime
from configcenter.services import save_version
from proxy import routes
from proxy.tests.upstream_stub import StubUpstream
from proxy.tests.utils import body_of, closed_port_url, json_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def loaded_config(settings: Any) -> Iterator[None]:
    """Each test starts with no version loaded and leaves none behind for the other proxy tests."""
    settings.UPSTREAM_CHECK_INTERVAL = 0  # only the calls made by each test judge the instances
    runtime.reset()
    yield
    runtime.reset()


def apply_version(values: dict[str, Any]) -> None:
    """Save a new version of the gateway's configuration and load it, as every worker does within
    CONFIG_POLL_INTERVAL."""
    save_version(
        service=django_settings.SERVICE_NAME, profile=django_settings.CONFIG_PROFILE, values=values, author="ops"
    )
    assert runtime.refresh()


def with_route_policy(monkeypatch: pytest.MonkeyPatch, prefix: str, **policy: Any) -> None:
    table = tuple(
        dataclasses.replace(route, upstream=dataclasses.replace(route.upstream, **policy))
        if route.prefix == prefix
        else route
        for route in routes.ROUTES
    )
    monkeypatch.setattr(routes, "ROUTES", table)


# Timeouts


def test_the_config_centers_read_timeout_applies_to_the_next_request_and_back(
    client: Client, users: StubUpstream
) -> None:
    # given a service answering after 0.5 s, within the setting's 2 s (UPSTREAM_READ_TIMEOUT)
    users.reply("/api/v1/users/", delay=0.5)
    assert client.get("/api/v1/users/1/").status_code == 200

    # when a version sets a shorter read timeout
    apply_version({"upstream.read_timeout": 0.2})
    started = time.perf_counter()
    response = client.get("/api/v1/users/1/")
    elapsed = time.perf_counter() - started

    # then the same request times out: 504, each attempt cut at 0.2 s (three attempts with backoff)
    assert response.status_code == 504
    assert json_of(response)["error"]["code"] == "upstream_timeout"
    assert elapsed < 1.4

    # and a version without the key gives the setting back
    apply_version({})
    assert client.get("/api/v1/users/1/").status_code == 200


def test_a_routes_own_read_timeout_wins_over_the_config_center(
    client: Client, users: StubUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_route_policy(monkeypatch, "/api/v1/users/", read_timeout=2.0)
    users.reply("/api/v1/users/", delay=0.5)

    apply_version({"upstream.read_timeout": 0.2})

    assert client.get("/api/v1/users/1/").status_code == 200


def test_the_config_centers_connect_timeout_applies(
    client: Client, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an instance that never completes a connection (a listener whose backlog is full drops SYNs),
    # and a setting of 5 s that would make this test wait
    settings.UPSTREAM_CONNECT_TIMEOUT = 5.0
    with_route_policy(monkeypatch, "/api/v1/users/", retries=0)
    with unanswered_port() as port:
        settings.UPSTREAMS = {**settings.UPSTREAMS, "users": f"http://127.0.0.1:{port}"}
        apply_version({"upstream.connect_timeout": 0.2})

        # when
        started = time.perf_counter()
        response = client.get("/api/v1/users/1/")
        elapsed = time.perf_counter() - started

    # then nothing reached the service, after the config center's 0.2 s, not the setting's 5 s
    assert response.status_code == 503
    assert json_of(response)["error"]["code"] == "upstream_unavailable"
    assert elapsed < 2.0


# The stale-fallback flag


def test_switching_stale_fallback_off_makes_a_down_catalog_answer_503(
    client: Client, orders: StubUpstream, settings: Any
) -> None:
    # given a copy of an earlier answer (the flag unset: on by default)
    orders.reply("/api/v1/products/", body=b'{"results": ["mug"]}', headers=[("Content-Type", "application/json")])
    assert body_of(client.get("/api/v1/products/")) == b'{"results": ["mug"]}'
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": closed_port_url()}
    assert client.get("/api/v1/products/")["X-Cache"] == "stale"

    # when the flag is switched off
    apply_version({"feature.stale_fallback": False})
    response = client.get("/api/v1/products/")

    # then the service's outage shows
    assert response.status_code == 503
    assert json_of(response)["error"]["code"] == "upstream_unavailable"
    assert "X-Cache" not in response

    # and switched on again, the copy answers again
    apply_version({"feature.stale_fallback": True})
    response = client.get("/api/v1/products/")
    assert response.status_code == 200
    assert response["X-Cache"] == "stale"


def test_while_stale_fallback_is_off_no_copy_is_taken(client: Client, orders: StubUpstream, settings: Any) -> None:
    apply_version({"feature.stale_fallback": False})
    assert body_of(client.get("/api/v1/products/1/")) != b""

    apply_version({"feature.stale_fallback": True})
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": closed_port_url()}

    assert client.get("/api/v1/products/1/").status_code == 503  # nothing was kept to fall back on
