"""The gateway's own liveness and readiness, beside /health (which summarises every service); and /metrics
is the gateway's own, never forwarded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from configcenter import services as configcenter_services
from configcenter.models import OutboxEvent
from proxy.routes import FORWARDED_PREFIXES, match_route
from proxy.tests.utils import closed_port_url, json_of
from proxy.views import health_document


@pytest.mark.django_db
def test_live_and_ready_pass_while_a_service_is_down_which_only_health_reports(client: Client, settings: Any) -> None:
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": closed_port_url()}

    assert (client.get("/health/live/").status_code, json_of(client.get("/health/live/"))) == (200, {"status": "ok"})
    ready = client.get("/health/ready/")
    assert ready.status_code == 200
    assert json_of(ready) == {
        "status": "ok",
        "checks": {"database": "ok", "outbox": "ok"},
        "events": {"outbox": {"pending": 0, "oldest_pending_seconds": None}},
    }
    assert client.get("/health").status_code == 503


def test_ready_fails_and_live_passes_when_the_database_is_unusable(client: Client) -> None:
    # No django_db mark: pytest-django makes every database access raise, as an unreachable database does.
    ready = client.get("/health/ready/")
    live = client.get("/health/live/")

    assert ready.status_code == 503
    assert json_of(ready) == {"status": "down", "checks": {"database": "unavailable"}}
    assert live.status_code == 200


def test_metrics_is_never_forwarded_to_a_service() -> None:
    for path in ("/metrics", "/metrics/"):
        assert match_route(path) is None
        assert not any(path.startswith(prefix) for prefix in FORWARDED_PREFIXES)


@pytest.mark.django_db
def test_ready_and_health_show_the_outbox_and_fail_once_its_oldest_event_waits_too_long(
    client: Client, settings: Any, stubs: Any
) -> None:
    # An unsent config.changed (no relay runs in tests): counted, and fine while it is young.
    configcenter_services.save_version(service="users", profile="default", values={}, author="test")
    ready = json_of(client.get("/health/ready/"))
    assert ready["checks"]["outbox"] == "ok"
    assert ready["events"]["outbox"]["pending"] == 1
    assert json_of(client.get("/health"))["gateway"]["events"]["outbox"]["pending"] == 1

    OutboxEvent.objects.update(occurred_at=timezone.now() - timedelta(seconds=301))
    settings.OUTBOX_MAX_LAG_SECONDS = 300
    health_document.clear()  # not this worker's document of the last second
    ready_response = client.get("/health/ready/")
    health_response = client.get("/health")

    assert ready_response.status_code == 503
    assert json_of(ready_response)["checks"]["outbox"].startswith("Outbox lagging: oldest pending event 30")
    assert health_response.status_code == 503
    assert json_of(health_response)["down"] == ["gateway"]
