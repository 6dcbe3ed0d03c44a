"""The endpoints common.urls gives every service, as this service wires them: liveness, readiness and the
internal /metrics, with requests counted by URL pattern name."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.mark.django_db(transaction=True)  # the health checks run in threads, with connections of their own
def test_live_and_ready_answer_on_their_own_paths_and_health_stays_readiness() -> None:
    client = Client()

    live = client.get("/health/live/", headers={"Accept": "application/json"})
    ready = client.get("/health/ready/", headers={"Accept": "application/json"})
    health = client.get("/health/", headers={"Accept": "application/json"})

    assert (live.status_code, live.json()) == (200, {"live": "ok"})
    assert ready.json().keys() == health.json().keys() >= {"database", "cache", "broker", "outbox"}


@pytest.mark.django_db
def test_metrics_count_requests_by_route_name_and_are_internal_only() -> None:
    Client().get("/health/live/")

    text = Client().get("/metrics").content.decode()

    assert 'http_requests_total{method="GET",route="health-live",status="200"}' in text
    assert "outbox_pending_events" in text
    assert Client(REMOTE_ADDR="203.0.113.9").get("/metrics").status_code == 404
