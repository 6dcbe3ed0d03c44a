from __future__ import annotations

import asyncio
import datetime
import json
import time
from typing import Any

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from health_check.exceptions import ServiceUnavailable

from common.dead_letters import dead_letter_send
from common.events import publish_event
from common.health import SERVICE_CHECKS, Broker, DeadLetters, Outbox, ServiceHealthView
from common.testing import EventBroker
from tests.eventstore.models import OutboxEvent
from tests.loopback import closed_port


def test_broker_check_passes_against_the_filesystem_broker(event_broker: EventBroker) -> None:
    result = asyncio.run(Broker().get_result())

    assert result.error is None


def test_broker_check_fails_quickly_against_an_unreachable_rabbitmq() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}//"
    check = Broker(timeout=datetime.timedelta(seconds=1))

    started = time.monotonic()
    with (
        override_settings(CELERY_BROKER_URL=url, CELERY_BROKER_TRANSPORT_OPTIONS={"confirm_publish": True}),
        pytest.raises(ServiceUnavailable, match="Broker unreachable"),
    ):
        check.run()

    assert time.monotonic() - started < check.timeout.total_seconds()


def test_broker_check_result_against_an_unreachable_rabbitmq_is_unavailable() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}//"

    with override_settings(CELERY_BROKER_URL=url, CELERY_BROKER_TRANSPORT_OPTIONS={"confirm_publish": True}):
        result = asyncio.run(Broker(timeout=datetime.timedelta(seconds=1)).get_result())

    assert isinstance(result.error, ServiceUnavailable)
    assert "Broker unreachable" in str(result.error)  # its own finding, not the wrapper's "Timed out"


def test_service_checks_include_the_broker() -> None:
    assert "common.health.Broker" in SERVICE_CHECKS


def test_service_checks_include_the_outbox_and_dead_letters() -> None:
    assert {"common.health.Outbox", "common.health.DeadLetters"} <= set(SERVICE_CHECKS)


@pytest.mark.django_db(transaction=True)  # the check runs in a thread of its own, with its own connection
def test_outbox_check_reports_pending_events_and_the_oldest_age() -> None:
    with transaction.atomic():
        publish_event("order.confirmed", {"order_id": 1})
    check = Outbox()

    result = asyncio.run(check.get_result())

    assert result.error is None
    assert check.stats["outbox"]["pending"] == 1
    assert check.stats["outbox"]["oldest_pending_seconds"] < 60


@pytest.mark.django_db
def test_outbox_check_fails_when_the_oldest_pending_event_is_older_than_the_allowed_lag() -> None:
    with transaction.atomic():
        publish_event("order.confirmed", {"order_id": 1})
    OutboxEvent.objects.update(occurred_at=timezone.now() - datetime.timedelta(seconds=400))

    with override_settings(OUTBOX_MAX_LAG_SECONDS=300), pytest.raises(ServiceUnavailable, match="Outbox lagging"):
        Outbox().run()


def test_dead_letters_check_counts_each_consumer_queue(event_broker: EventBroker) -> None:
    dead_letter_send(queue="test.events", event={"id": "e1", "type": "thing.broken"}, attempts=3, error="boom")
    check = DeadLetters()

    result = asyncio.run(check.get_result())

    assert result.error is None
    assert check.stats == {"dead_letters": {"test.events": 1}}


def test_dead_letters_check_does_not_fail_when_the_broker_is_down() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}//"
    check = DeadLetters(timeout=datetime.timedelta(seconds=1))

    with override_settings(CELERY_BROKER_URL=url, CELERY_BROKER_TRANSPORT_OPTIONS={}):
        check.run()

    assert check.stats == {"dead_letters": {"test.events": None}}


@pytest.mark.django_db(transaction=True)
def test_health_view_shows_the_event_figures_beside_the_checks(event_broker: EventBroker, async_rf: Any) -> None:
    view = ServiceHealthView.as_view(checks=("common.health.Outbox", "common.health.DeadLetters"))

    response = asyncio.run(view(async_rf.get("/health/", headers={"Accept": "application/json"})))

    assert response.status_code == 200
    assert json.loads(response.content) == {
        "outbox": "ok",
        "deadletters": "ok",
        "events": {
            "outbox": {"pending": 0, "oldest_pending_seconds": None},
            "dead_letters": {"test.events": 0},
        },
    }


# Liveness and readiness (as common.urls.service_urls wires them)


def get_health(path: str) -> tuple[int, dict[str, Any]]:
    from django.test import Client

    response = Client().get(path, headers={"Accept": "application/json"})
    return response.status_code, json.loads(response.content)


@pytest.mark.django_db(transaction=True)  # the checks run in threads of their own, with their own connections
def test_ready_and_live_pass_when_the_dependencies_are_up(event_broker: EventBroker) -> None:
    assert get_health("/health/ready/")[0] == 200
    assert get_health("/health/live/") == (200, {"live": "ok"})


@pytest.mark.django_db(transaction=True)
def test_ready_fails_and_live_passes_when_the_broker_is_unreachable() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}//"

    with override_settings(CELERY_BROKER_URL=url, CELERY_BROKER_TRANSPORT_OPTIONS={"confirm_publish": True}):
        ready_status, ready = get_health("/health/ready/")
        live = get_health("/health/live/")

    assert ready_status == 500
    assert ready["broker"] == "Unavailable: Broker unreachable"
    assert ready["database"] == "ok"
    assert live == (200, {"live": "ok"})


@pytest.mark.django_db(transaction=True)
def test_ready_fails_and_live_passes_when_the_database_is_unusable(
    event_broker: EventBroker, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import connections

    # The checks' threads open new connections from these settings: a file that cannot be created.
    monkeypatch.setitem(connections.settings["default"], "NAME", str(tmp_path / "missing" / "db.sqlite3"))

    ready_status, ready = get_health("/health/ready/")
    live = get_health("/health/live/")

    assert ready_status == 500
    assert ready["database"] != "ok"
    assert ready["broker"] == "ok"
    assert live == (200, {"live": "ok"})
