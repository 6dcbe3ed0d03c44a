"""The gateway's own liveness and readiness, beside /health (which summarises every service); and /metrics
is the gateway's own, never forwarded."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from proxy.routes import FORWARDED_PREFIXES, match_route
from proxy.tests.utils import closed_port_url, json_of


@pytest.mark.django_db
def test_live_and_ready_pass_while_a_service_is_down_which_only_health_reports(client: Client, settings: Any) -> None:
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": closed_port_url()}

    assert (client.get("/health/live/").status_code, json_of(client.get("/health/live/"))) == (200, {"status": "ok"})
    ready = client.get("/health/ready/")
    assert (ready.status_code, json_of(ready)) == (200, {"status": "ok", "checks": {"database": "ok"}})
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
