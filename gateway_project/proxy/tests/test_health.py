from __future__ import annotations

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
