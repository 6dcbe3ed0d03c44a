"""The outbox relay against real brokers: the test's private filesystem broker, a closed port, and (when
BROKER_URL names one) RabbitMQ with publisher confirms."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone
from kombu import Connection, Queue, binding

from common.events import EVENTS_EXCHANGE, event_from_outbox, publish_event, send_event
from common.outbox import outbox_claim, outbox_prune, outbox_stats, relay_once, relay_pending, retry_delay, run_relay
from common.testing import EventBroker
from tests.celery_app import app as celery_app
from tests.eventstore.models import OutboxEvent
from tests.loopback import closed_port

pytestmark = pytest.mark.django_db


def record(event_type: str = "order.confirmed", **data: object) -> str:
    with transaction.atomic():
        return publish_event(event_type, {"order_id": 3, **data}, aggregate_id=3).id


@pytest.fixture
def unreachable_broker(event_broker: EventBroker) -> Iterator[None]:
    """The app pointed at a RabbitMQ address where nothing listens, then back at the test's broker."""
    conf = celery_app.conf
    saved = conf.broker_url, conf.broker_transport_options, conf.broker_connection_timeout
    event_broker.stop()
    conf.broker_url = f"amqp://guest:guest@127.0.0.1:{closed_port()}//"
    conf.broker_transport_options = {"confirm_publish": True}
    conf.broker_connection_timeout = 1
    try:
        yield
    finally:
        conf.broker_url, conf.broker_transport_options, conf.broker_connection_timeout = saved
        event_broker.start()


def test_relay_publishes_pending_rows_and_marks_them_sent(event_broker: EventBroker) -> None:
    drain = event_broker.subscribe("order.*")
    first, second = record(), record("order.cancelled")

    result = relay_once()

    assert (result.sent, result.failed) == (2, 0)
    assert [published.event["id"] for published in drain()] == [first, second]
    assert set(OutboxEvent.objects.values_list("attempts", flat=True)) == {1}
    assert not OutboxEvent.objects.filter(sent_at__isnull=True).exists()
    # Sent rows are not sent again
    assert relay_once().sent == 0
    assert drain() == []


def test_relay_retries_with_backoff_after_a_broker_failure_and_sends_once_it_is_back(
    event_broker: EventBroker, unreachable_broker: None
) -> None:
    record()
    before = timezone.now()

    result = relay_once()

    assert (result.sent, result.failed) == (0, 1)
    row = OutboxEvent.objects.get()
    assert row.sent_at is None
    assert row.attempts == 1
    assert row.last_error
    assert row.next_attempt_at >= before + timedelta(seconds=retry_delay(1))
    # Not due yet: a relay round right now does not try again
    assert relay_once().failed == 0


def test_row_that_failed_is_sent_when_due_again(event_broker: EventBroker) -> None:
    drain = event_broker.subscribe("order.*")
    event_id = record()
    OutboxEvent.objects.update(attempts=3, last_error="ConnectionRefusedError()", next_attempt_at=timezone.now())

    assert relay_pending() == 1

    assert [published.event["id"] for published in drain()] == [event_id]
    row = OutboxEvent.objects.get()
    assert (row.attempts, row.last_error) == (4, "")
    assert row.sent_at is not None


def test_backoff_doubles_per_attempt_up_to_the_ceiling(settings: object) -> None:
    assert [retry_delay(attempt) for attempt in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_a_claimed_row_is_not_claimed_again_until_its_lease_runs_out(event_broker: EventBroker) -> None:
    record()

    [claimed] = outbox_claim(limit=10)

    assert outbox_claim(limit=10) == []  # a second relay finds nothing to take
    # The first relay died between publishing and marking: once the lease is over the row goes out again
    later = timezone.now() + timedelta(seconds=31)
    [again] = outbox_claim(limit=10, now=later)
    assert again.pk == claimed.pk


def test_relay_killed_between_publish_and_mark_sends_a_duplicate_with_the_same_event_id(
    event_broker: EventBroker,
) -> None:
    drain = event_broker.subscribe("order.*")
    event_id = record()
    # Given a relay that published and died before marking the row sent
    [row] = outbox_claim(limit=10)
    send_event(event_from_outbox(row))
    # When its lease runs out and another relay runs
    OutboxEvent.objects.update(next_attempt_at=timezone.now())
    relay_pending()

    # Then the event went out twice, under one id: the consumers' inbox makes the second a no-op
    assert [published.event["id"] for published in drain()] == [event_id, event_id]


def test_stats_count_pending_rows_and_the_age_of_the_oldest(event_broker: EventBroker) -> None:
    assert outbox_stats().as_dict() == {"pending": 0, "oldest_pending_seconds": None}
    record()
    record()
    OutboxEvent.objects.filter(pk=OutboxEvent.objects.order_by("occurred_at").first().pk).update(
        occurred_at=timezone.now() - timedelta(seconds=90)
    )

    stats = outbox_stats()

    assert stats.pending == 2
    assert 90 <= (stats.oldest_pending_seconds or 0) < 100


def test_prune_deletes_only_rows_sent_long_ago(event_broker: EventBroker) -> None:
    record()
    record()
    relay_pending()
    record()  # pending
    OutboxEvent.objects.filter(sent_at__isnull=False).update(sent_at=timezone.now() - timedelta(days=8))
    OutboxEvent.objects.filter(pk=OutboxEvent.objects.filter(sent_at__isnull=False).first().pk).update(
        sent_at=timezone.now()
    )

    assert outbox_prune(older_than=timedelta(days=7)) == 1
    assert OutboxEvent.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_running_relay_sends_a_committed_event_within_a_second_and_stops_when_asked(
    event_broker: EventBroker,
) -> None:
    drain = event_broker.subscribe("order.*")
    stop = threading.Event()
    relay = threading.Thread(target=run_relay, kwargs={"stop": stop, "poll_interval": 0.05})
    relay.start()
    try:
        event_id = record()
        deadline = timezone.now() + timedelta(seconds=5)
        while OutboxEvent.objects.filter(sent_at__isnull=True).exists() and timezone.now() < deadline:
            stop.wait(0.02)
        row = OutboxEvent.objects.get()
        assert row.sent_at is not None
        assert (row.sent_at - row.occurred_at).total_seconds() < 1.0
    finally:
        stop.set()
        relay.join(timeout=5)
    assert not relay.is_alive()
    assert [published.event["id"] for published in drain()] == [event_id]


def test_relay_outbox_command_once_sends_what_is_due(event_broker: EventBroker, capsys: pytest.CaptureFixture) -> None:
    drain = event_broker.subscribe("order.*")
    record()

    call_command("relay_outbox", "--once")

    assert "sent 1 events" in capsys.readouterr().out
    assert len(drain()) == 1


def test_relay_publishes_with_confirms_and_persistence_to_rabbitmq(event_broker: EventBroker) -> None:
    url = os.environ.get("BROKER_URL", "")
    if not url.startswith("amqp://"):
        pytest.skip("BROKER_URL does not name a RabbitMQ")
    event_broker.stop()
    conf = celery_app.conf
    saved = conf.broker_url, conf.broker_transport_options
    conf.broker_url, conf.broker_transport_options = url, {"confirm_publish": True}
    # A type and a queue of this test alone: a running system's queues never see this event.
    event_type = f"test{uuid.uuid4().hex[:12]}.confirmed"
    queue = Queue(f"test.{uuid.uuid4().hex}", [binding(EVENTS_EXCHANGE, routing_key=event_type)], auto_delete=False)
    try:
        with Connection(url) as connection:
            queue(connection.default_channel).declare()
        event_id = record(event_type)

        assert relay_pending() == 1

        with celery_app.producer_or_acquire() as producer:
            # The pooled producer that published put its channel in confirm mode: py-amqp waited for the
            # broker's ack before the relay marked the row sent.
            assert producer.connection.transport_options["confirm_publish"] is True
            assert producer.channel._confirm_selected
        with Connection(url) as connection:
            message = queue(connection.default_channel).get(no_ack=True)
        assert message is not None
        assert message.properties["delivery_mode"] == 2
        assert message.decode()[1]["event"]["id"] == event_id
        assert OutboxEvent.objects.get().sent_at is not None
    finally:
        with Connection(url) as connection:
            queue(connection.default_channel).delete()
        conf.broker_url, conf.broker_transport_options = saved
        event_broker.start()
