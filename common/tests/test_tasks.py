"""The worker's task for incoming events, run as the worker runs it."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import pytest
from celery.exceptions import Retry
from kombu import Queue

from common.events import Event
from common.request_id import get_request_id
from common.tasks import handle_event
from common.testing import EventBroker
from tests.handlers import Call


def envelope(event_type: str, **overrides: Any) -> dict[str, Any]:
    event = Event(type=event_type, data={"order_id": 3}, source="orders", request_id="req-from-orders")
    return asdict(event) | overrides


def test_event_without_a_handler_is_ignored(handler_calls: list[Call]) -> None:
    assert handle_event.apply(kwargs={"event": envelope("nobody.cares")}).successful()

    assert handler_calls == []


def test_event_is_dispatched_to_the_configured_handler_under_its_request_id(handler_calls: list[Call]) -> None:
    message = envelope("thing.happened")

    assert handle_event.apply(kwargs={"event": message}).successful()

    assert handler_calls == [Call(event=Event.from_message(message), request_id="req-from-orders")]
    assert get_request_id() == "-"  # restored after the handler


def test_event_without_a_request_id_is_handled_under_a_fresh_one(handler_calls: list[Call]) -> None:
    handle_event.apply(kwargs={"event": envelope("thing.happened", request_id="")})

    [call] = handler_calls
    assert re.fullmatch(r"[0-9a-f]{32}", call.request_id)


def test_transient_failure_is_retried_on_the_services_own_queue_only(
    event_broker: EventBroker, handler_calls: list[Call]
) -> None:
    # Given another service subscribed to the same event type
    other_subscriber = event_broker.subscribe("thing.failed")
    own_queue = Queue("test.events")
    message = envelope("thing.failed")

    # When the worker runs the task and the handler fails with a transient error
    handle_event.push_request(id=message["id"], args=[], kwargs={"event": message}, retries=0, called_directly=False)
    try:
        with pytest.raises(Retry):
            handle_event.run(message)
    finally:
        handle_event.pop_request()

    # Then the retry waits on this service's queue, and the other subscriber does not get the event again
    with event_broker.connection() as connection:
        retried = own_queue(connection.default_channel).get(no_ack=True)
    assert retried is not None
    assert retried.delivery_info["routing_key"] == "test.events"
    assert retried.headers["task"] == "events.handle"
    assert retried.headers["retries"] == 1
    assert retried.headers["eta"] is not None
    assert retried.decode()[1] == {"event": message}
    assert other_subscriber() == []
    assert len(handler_calls) == 1
    assert get_request_id() == "-"


def test_other_failures_are_not_retried(event_broker: EventBroker, handler_calls: list[Call]) -> None:
    message = envelope("thing.broken")

    result = handle_event.apply(kwargs={"event": message})

    assert result.failed()
    assert isinstance(result.result, ValueError)
    assert len(handler_calls) == 1  # one attempt only
    with event_broker.connection() as connection:
        assert Queue("test.events")(connection.default_channel).get(no_ack=True) is None
