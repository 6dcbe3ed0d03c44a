"""Events are real messages on a private filesystem broker (the event_broker fixture), read back from queues
bound to the events exchange as a consuming service binds its own."""

from __future__ import annotations

import re
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import transaction
from kombu import Queue, binding

from common.events import (
    EVENTS_EXCHANGE,
    HANDLE_TASK_NAME,
    Event,
    OutsideTransaction,
    dead_letter_queue,
    event_queue,
    own_event_queue_name,
    publish_event,
)
from common.request_id import reset_request_id, set_request_id
from common.testing import EventBroker
from tests.eventstore.models import OutboxEvent

# Inside the test's transaction, as publish_event requires; the drain functions relay the outbox.
pytestmark = pytest.mark.django_db


def probe_queue(broker: EventBroker, routing_key: str) -> Queue:
    queue = Queue(f"probe.{uuid.uuid4().hex}", [binding(EVENTS_EXCHANGE, routing_key=routing_key)])
    with broker.connection() as connection:
        queue(connection.default_channel).declare()
    return queue


def next_message(broker: EventBroker, queue: Queue) -> Any:
    with broker.connection() as connection:
        return queue(connection.default_channel).get(no_ack=True)


def test_published_event_is_a_persistent_handle_task_on_the_events_exchange(event_broker: EventBroker) -> None:
    queue = probe_queue(event_broker, "order.confirmed")

    event = publish_event("order.confirmed", {"order_id": 3, "total": "19.99"})
    assert next_message(event_broker, queue) is None  # only in the outbox until the relay runs
    event_broker.relay()

    message = next_message(event_broker, queue)
    assert message is not None
    assert message.properties["delivery_mode"] == 2
    assert message.delivery_info["exchange"] == "events"
    assert message.delivery_info["routing_key"] == "order.confirmed"
    assert message.content_type == "application/json"
    assert message.headers["task"] == HANDLE_TASK_NAME
    assert message.headers["id"] == event.id
    args, kwargs, _embed = message.decode()
    assert args == []
    assert kwargs == {"event": asdict(event)}


def test_published_event_envelope(event_broker: EventBroker) -> None:
    drain = event_broker.subscribe("order.*")
    token = set_request_id("req-12345678")
    try:
        returned = publish_event("order.confirmed", {"order_id": 3}, version=2, aggregate_id=3)
    finally:
        reset_request_id(token)

    [published] = drain()
    envelope = published.event
    assert (published.routing_key, published.task) == ("order.confirmed", "events.handle")
    assert envelope == asdict(returned)
    assert uuid.UUID(envelope["id"]).version == 4
    assert envelope["type"] == "order.confirmed"
    assert envelope["version"] == 2
    assert envelope["source"] == "test"  # the publishing service's SERVICE_NAME
    assert envelope["request_id"] == "req-12345678"
    assert envelope["data"] == {"order_id": 3}
    assert envelope["aggregate_id"] == "3"
    assert envelope["trace_context"] == {}  # filled once OpenTelemetry is installed
    occurred_at = datetime.fromisoformat(envelope["occurred_at"])
    assert occurred_at.tzinfo is not None
    assert abs((datetime.now(UTC) - occurred_at).total_seconds()) < 60


def test_event_published_outside_a_request_gets_a_request_id_of_its_own(event_broker: EventBroker) -> None:
    drain = event_broker.subscribe("user.created")

    publish_event("user.created", {"user_id": 1})

    [published] = drain()
    assert re.fullmatch(r"[0-9a-f]{32}", published.event["request_id"])


def test_event_reaches_only_queues_bound_to_its_type(event_broker: EventBroker) -> None:
    orders = event_broker.subscribe("order.confirmed")
    users = event_broker.subscribe("user.created")
    everything = event_broker.subscribe("#")

    publish_event("order.confirmed", {"order_id": 3})
    publish_event("user.created", {"user_id": 1})

    assert [p.routing_key for p in orders()] == ["order.confirmed"]
    assert [p.routing_key for p in users()] == ["user.created"]
    assert [p.routing_key for p in everything()] == ["order.confirmed", "user.created"]


def test_event_queue_is_durable_and_bound_to_each_type_on_the_events_exchange() -> None:
    queue = event_queue("users", ["user.created", "order.confirmed"])

    assert queue.name == "users.events"
    assert queue.durable is True
    assert {(b.exchange.name, b.routing_key) for b in queue.bindings} == {
        ("events", "user.created"),
        ("events", "order.confirmed"),
    }
    assert all(b.exchange.type == "topic" and b.exchange.durable for b in queue.bindings)


def test_own_event_queue_is_named_after_the_service() -> None:
    assert own_event_queue_name() == "test.events"


def test_event_round_trips_through_its_message_form() -> None:
    event = Event(type="order.confirmed", data={"order_id": 3}, version=3, source="orders", request_id="req-1234")

    assert Event.from_message(asdict(event)) == event


def test_event_from_a_minimal_message_takes_the_defaults() -> None:
    message = {"type": "user.created", "data": {}, "id": "e1", "occurred_at": "2025-01-01T00:00:00+00:00"}

    assert Event.from_message(message) == Event(
        type="user.created", data={}, version=1, source="", id="e1", occurred_at="2025-01-01T00:00:00+00:00"
    )


@pytest.mark.django_db(transaction=True)
def test_publishing_outside_a_transaction_is_refused_and_records_nothing() -> None:
    with pytest.raises(OutsideTransaction, match="inside the transaction"):
        publish_event("order.confirmed", {"order_id": 3})

    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_event_is_written_in_the_transaction_of_the_change(event_broker: EventBroker) -> None:
    drain = event_broker.subscribe("order.*")

    with transaction.atomic():
        event = publish_event("order.confirmed", {"order_id": 3})
        row = OutboxEvent.objects.get()
        assert (str(row.id), row.sent_at) == (event.id, None)

    assert [published.event["id"] for published in drain()] == [event.id]


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_leaves_no_outbox_row_and_publishes_nothing(event_broker: EventBroker) -> None:
    drain = event_broker.subscribe("#")

    def change_that_fails() -> None:
        with transaction.atomic():
            publish_event("order.confirmed", {"order_id": 3})
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError, match="the change failed"):
        change_that_fails()

    assert not OutboxEvent.objects.exists()
    assert drain() == []


def test_dead_letter_queue_is_durable_and_reached_by_name_through_the_default_exchange() -> None:
    queue = dead_letter_queue("users.events")

    assert (queue.name, queue.routing_key, queue.exchange.name, queue.durable) == (
        "users.events.dead",
        "users.events.dead",
        "",
        True,
    )
