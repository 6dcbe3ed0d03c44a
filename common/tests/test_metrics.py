"""A service's /metrics (common.metrics): HTTP by route and status, Celery task outcomes, outbox and dead-letter
figures and the service clients' breakers and instances read at scrape time, and the guard that shows it to
internal networks only."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from celery import signals as celery_signals
from django.test import Client

from common.errors import UpstreamUnavailable
from common.http import service_client
from common.testing import EventBroker
from tests.celery_app import app as celery_app
from tests.loopback import LoopbackServer, closed_port


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition, None when absent."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(match.group(3))
    return None


def scrape(client: Client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


@pytest.mark.django_db(transaction=True)  # the outbox is read at scrape time
def test_requests_are_counted_by_route_name_and_status_with_latency(event_broker: EventBroker) -> None:
    client = Client()
    before = sample(scrape(client), "http_requests_total", route="thing-detail", status="200") or 0.0

    client.get("/things/41/")
    client.get("/things/42/")
    client.get("/no/such/path/")
    text = scrape(client)

    assert sample(text, "http_requests_total", route="thing-detail", method="GET", status="200") == before + 2
    assert sample(text, "http_requests_total", route="unmatched", method="GET", status="404") is not None
    assert sample(text, "http_request_duration_seconds_count", route="thing-detail") is not None
    assert "/things/41/" not in text  # the raw path, with its ids, never becomes a label
    assert sample(text, "outbox_pending_events") == 0
    assert sample(text, "outbox_oldest_pending_seconds") == 0
    assert sample(text, "dead_letter_messages", queue="test.events") == 0


def test_celery_task_outcomes_and_durations_are_counted() -> None:
    @celery_app.task(name="tests.metrics.ok")
    def ok() -> int:
        return 1

    @celery_app.task(name="tests.metrics.broken")
    def broken() -> None:
        raise ValueError("broken")

    ok.apply()
    broken.apply()
    text = scrape(Client())

    assert sample(text, "celery_tasks_total", task="tests.metrics.ok", outcome="SUCCESS") == 1
    assert sample(text, "celery_tasks_total", task="tests.metrics.broken", outcome="FAILURE") == 1
    assert sample(text, "celery_task_duration_seconds_count", task="tests.metrics.ok") == 1


@pytest.mark.parametrize("address", ["10.0.0.5", "192.168.1.20", "2001:db8::1", "not-an-address"])
def test_metrics_from_outside_the_allowed_networks_are_not_found(address: str) -> None:
    response = Client(REMOTE_ADDR=address).get("/metrics")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_metrics_through_a_proxy_are_not_found_even_from_loopback() -> None:
    response = Client().get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})

    assert response.status_code == 404


def test_metrics_only_answer_reads() -> None:
    assert Client().post("/metrics").status_code == 405


def test_the_allowed_networks_are_configurable(settings: object) -> None:
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]  # type: ignore[attr-defined]

    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    assert Client().get("/metrics").status_code == 404


def test_the_service_clients_breaker_states_and_instances_are_exported(settings: Any, server: LoopbackServer) -> None:
    settings.DISCOVERY_BACKEND, settings.SERVICE_CHECK_INTERVAL, settings.SERVICE_BREAKER_REDIS_URL = "static", 0, ""
    settings.SERVICE_BREAKER_FAILURES = 1
    dead = f"http://127.0.0.1:{closed_port()}"
    payments = service_client(audience="payments", base_url=dead)
    users = service_client(audience="users", base_url=server.url)
    users.request("GET", "/ping")

    with pytest.raises(UpstreamUnavailable):  # a real port that refuses: the breaker trips
        payments.request("POST", "/api/v1/payments/", json={})
    text = scrape(Client())

    assert sample(text, "service_client_breaker_state", target="payments", state="open") == 1
    assert sample(text, "service_client_breaker_state", target="payments", state="closed") == 0
    assert sample(text, "service_client_breaker_state", target="users", state="closed") == 1
    assert sample(text, "service_client_breaker_state", target="users", state="half_open") == 0
    assert sample(text, "service_client_instance_up", target="payments", instance=dead) == 0  # ejected
    assert sample(text, "service_client_instance_up", target="users", instance=server.url) == 1


def test_a_stopping_worker_process_drops_its_live_gauges_and_keeps_its_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given this process's files in a multiprocess metrics folder: a live gauge and a counter
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    live_gauge = tmp_path / f"gauge_liveall_{os.getpid()}.db"
    counter = tmp_path / f"counter_{os.getpid()}.db"
    live_gauge.write_bytes(b"")
    counter.write_bytes(b"")

    # when Celery says the worker (or a pool process) is stopping
    celery_signals.worker_shutdown.send(sender=None)

    # then its live gauge is gone, so a scrape no longer reports a process that is not there
    assert not live_gauge.exists()
    assert counter.exists()
