"""This service's outbox and inbox models with the shared logic of common.events / outbox / inbox: an event
is written in the transaction of its change, and the relay sends it to a real (filesystem) broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.urls import reverse

from common.events import publish_event
from common.inbox import handle_once
from common.outbox import outbox_claim, outbox_stats, relay_pending
from common.testing import EventBroker
from messaging.models import InboxEvent, OutboxEvent
from payment_service.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EventBroker]:
    with EventBroker(tmp_path / "outbox-broker", celery_app) as private:
        yield private


def test_settings_name_this_services_models(settings: Any) -> None:
    assert (settings.OUTBOX_MODEL, settings.INBOX_MODEL) == ("messaging.OutboxEvent", "messaging.InboxEvent")


@pytest.mark.django_db(transaction=True)
def test_event_committed_with_its_change_is_relayed_and_marked_sent(broker: EventBroker) -> None:
    drain = broker.subscribe("thing.*")
    with transaction.atomic():
        event = publish_event("thing.happened", {"thing_id": 1}, aggregate_id=1)
    assert OutboxEvent.objects.get().sent_at is None

    [published] = drain()  # relays the outbox first

    assert published.event["id"] == event.id
    assert published.event["source"] == "payments"
    assert OutboxEvent.objects.get().sent_at is not None
    assert relay_pending() == 0


@pytest.mark.django_db(transaction=True)
def test_rolled_back_change_leaves_no_event(broker: EventBroker) -> None:
    drain = broker.subscribe("#")

    def change_that_fails() -> None:
        with transaction.atomic():
            publish_event("thing.happened", {"thing_id": 1})
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        change_that_fails()

    assert not OutboxEvent.objects.exists()
    assert drain() == []


def test_inbox_runs_a_handler_once_per_event() -> None:
    with transaction.atomic():
        event = publish_event("thing.happened", {"thing_id": 1})
    calls: list[str] = []

    assert handle_once(event, lambda e: calls.append(e.id)) is True
    assert handle_once(event, lambda e: calls.append(e.id)) is False

    assert calls == [event.id]
    assert InboxEvent.objects.get().event_id == event.id


def test_admin_lists_the_outbox_with_its_figures(admin_client: Client, broker: EventBroker) -> None:
    with transaction.atomic():
        publish_event("thing.happened", {"thing_id": 1})

    response = admin_client.get(reverse("admin:messaging_outboxevent_changelist"), follow=True)

    assert response.status_code == 200
    assert b"Pending: 1" in response.content
    assert b"thing.happened" in response.content
    assert outbox_stats().pending == 1
    assert admin_client.get(reverse("admin:messaging_inboxevent_changelist")).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_postgresql_relays_skip_rows_another_relay_has_locked() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED is PostgreSQL's; SQLite serialises writers (the lease covers both)")
    with transaction.atomic():
        publish_event("thing.happened", {"thing_id": 1})
    locked, release = threading.Event(), threading.Event()

    def other_relay() -> None:
        # Another relay mid-claim: the row locked by its open transaction
        try:
            with transaction.atomic():
                list(OutboxEvent.objects.select_for_update().filter(sent_at__isnull=True))
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_relay)
    thread.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        assert outbox_claim(limit=10) == []  # skipped, not waited for
        assert time.monotonic() - started < 2
    finally:
        release.set()
        thread.join(10)
    assert len(outbox_claim(limit=10)) == 1  # free again once the other transaction ended
