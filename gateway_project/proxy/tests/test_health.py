from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client

from proxy.tests.upstream_stub import StubUpstream
from proxy.tests.utils import closed_port_url, json_of

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/health", "/health/"])
def test_health_is_ok_when_every_service_is(client: Client, stubs: dict[str, StubUpstream], path: str) -> None:
    response = client.get(path)

    assert response.status_code == 200
    body = json_of(response)
    assert body["status"] == "ok"
    assert body["gateway"] == {
        "status": "ok",
        "checks": {"database": "ok", "outbox": "ok"},
        "events": {"outbox": {"pending": 0, "oldest_pending_seconds": None}},
    }
    assert body["services"]["users"] == {
        "status": "ok",
        "checks": {"database": "ok", "cache": "ok", "broker": "ok"},
    }
    assert set(body["services"]) == {"users", "orders", "payments"}
    assert "down" not in body


def test_health_is_503_naming_a_service_that_is_unreachable(client: Client, settings: Any) -> None:
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": closed_port_url()}

    response = client.get("/health")

    assert response.status_code == 503
    body = json_of(response)
    assert body["status"] == "unavailable"
    assert body["down"] == ["orders"]
    assert body["services"]["orders"] == {"status": "down", "reason": "unreachable"}
    assert body["services"]["users"]["status"] == "ok"


def test_health_is_503_naming_a_service_whose_own_checks_fail(client: Client, payments: StubUpstream) -> None:
    payments.health = (500, {"DatabaseHealthCheck": "unavailable: connection refused"})

    response = client.get("/health")

    assert response.status_code == 503
    body = json_of(response)
    assert body["down"] == ["payments"]
    assert body["services"]["payments"] == {
        "status": "down",
        "reason": "HTTP 500",
        "checks": {"DatabaseHealthCheck": "unavailable: connection refused"},
    }


def test_health_is_503_naming_a_service_that_answers_too_slowly(
    client: Client, users: StubUpstream, settings: Any
) -> None:
    settings.HEALTH_CHECK_TIMEOUT = 0.2
    users.health_delay = 1.0

    response = client.get("/health")

    assert response.status_code == 503
    assert json_of(response)["services"]["users"] == {"status": "down", "reason": "timeout"}


# Who sees what, and what a flood costs

PUBLIC_PEER = "203.0.113.9"  # outside METRICS_ALLOWED_NETWORKS (the Django test client is 127.0.0.1)


def test_a_public_peer_gets_the_status_alone(client: Client, stubs: dict[str, StubUpstream]) -> None:
    response = client.get("/health", REMOTE_ADDR=PUBLIC_PEER)

    assert response.status_code == 200
    assert json_of(response) == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


def test_a_public_peer_gets_the_same_503_without_naming_what_is_down(client: Client, settings: Any) -> None:
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": closed_port_url()}

    response = client.get("/health", REMOTE_ADDR=PUBLIC_PEER)

    assert response.status_code == 503
    assert json_of(response) == {"status": "unavailable"}


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_a_request_relayed_by_a_proxy_gets_the_status_alone_even_from_loopback(client: Client, header: str) -> None:
    # a reverse proxy on the gateway's host would otherwise make every public request look internal
    response = client.get("/health", headers={header: "for=203.0.113.9" if header == "Forwarded" else PUBLIC_PEER})

    assert json_of(response) == {"status": "ok"}


def test_a_flood_of_health_requests_checks_the_services_once_a_second(
    client: Client, stubs: dict[str, StubUpstream], settings: Any
) -> None:
    # given no active checks of the instances (they call /health/ too)
    settings.UPSTREAM_CHECK_INTERVAL = 0

    # when twenty requests arrive within a second, then one more a second later
    flood = [client.get("/health", REMOTE_ADDR=PUBLIC_PEER).status_code for _ in range(20)]
    checks_during_the_flood = {name: stub.health_checks for name, stub in stubs.items()}
    time.sleep(1.05)
    later = client.get("/health")

    # then the services were asked once for the flood, and once again when the document had aged
    assert flood == [200] * 20
    assert checks_during_the_flood == {"users": 1, "orders": 1, "payments": 1}
    assert later.status_code == 200
    assert {stub.health_checks for stub in stubs.values()} == {2}
