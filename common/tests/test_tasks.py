"""The worker's task for incoming events, run as the worker runs it."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import pytest
from celery.exceptions import Reject, Retry
from django.conf import settings
from django.core.management import CommandError, call_command
from kombu import Queue

from common.dead_letters import dead_letter_count, dead_letter_list, dead_letter_redrive, dead_letter_send
from common.events import Event
from common.inbox import handle_once
from common.request_id import get_request_id
from common.tasks import handle_event, retry_countdown
from common.testing import EventBroker
from tests.celery_app import app as celery_app
from tests.eventstore.models import InboxEvent
from tests.handlers import Call
from tests.loopback import closed_port

# Handling goes through the inbox table.
pytestmark = pytest.mark.django_db


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


def test_any_failure_is_retried_with_exponential_backoff(event_broker: EventBroker, handler_calls: list[Call]) -> None:
    # Given an event whose handler has a bug (ValueError), on its second attempt
    message = envelope("thing.broken")
    handle_event.push_request(id=message["id"], args=[], kwargs={"event": message}, retries=1, called_directly=False)
    try:
        with pytest.raises(Retry) as retry:
            handle_event.run(message)
    finally:
        handle_event.pop_request()

    # Then it is retried too (a fix deployed meanwhile heals it), after twice the base backoff
    assert retry.value.when == pytest.approx(2 * settings.EVENT_RETRY_BACKOFF)
    with event_broker.connection() as connection:
        retried = Queue("test.events")(connection.default_channel).get(no_ack=True)
    assert retried is not None
    assert retried.headers["retries"] == 2


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert [retry_countdown(attempt) for attempt in (1, 2, 3, 4)] == [0.01, 0.02, 0.04, 0.05]


def test_the_last_allowed_attempt_that_fails_becomes_one_dead_letter(
    event_broker: EventBroker, handler_calls: list[Call]
) -> None:
    message = envelope("thing.broken")
    last = settings.EVENT_MAX_ATTEMPTS - 1  # retries so far
    handle_event.push_request(id=message["id"], args=[], kwargs={"event": message}, retries=last, called_directly=False)
    try:
        with pytest.raises(ValueError, match="a bug in the handler"):
            handle_event.run(message)
    finally:
        handle_event.pop_request()

    [letter] = dead_letter_list("test.events")
    assert letter.event == message
    assert (letter.queue, letter.attempts) == ("test.events", settings.EVENT_MAX_ATTEMPTS)
    assert "a bug in the handler" in letter.error
    with event_broker.connection() as connection:
        assert Queue("test.events")(connection.default_channel).get(no_ack=True) is None  # no further retry
    assert dead_letter_count("test.events") == 1  # listing left it in place


def test_a_dead_letter_that_cannot_be_published_is_given_back_to_the_broker(
    event_broker: EventBroker, handler_calls: list[Call]
) -> None:
    message = envelope("thing.broken")
    handle_event.push_request(
        id=message["id"], args=[], kwargs={"event": message}, retries=settings.EVENT_MAX_ATTEMPTS - 1
    )
    event_broker.stop()
    conf = celery_app.conf
    saved = conf.broker_url, conf.broker_transport_options, conf.broker_connection_timeout
    conf.broker_url, conf.broker_transport_options = f"amqp://guest:guest@127.0.0.1:{closed_port()}//", {}
    conf.broker_connection_timeout = 1
    try:
        with pytest.raises(Reject) as rejected:
            handle_event.run(message)
    finally:
        conf.broker_url, conf.broker_transport_options, conf.broker_connection_timeout = saved
        handle_event.pop_request()
        event_broker.start()

    assert rejected.value.requeue is True  # redelivered later, never acknowledged into nothing


def test_an_event_handled_once_has_no_second_effect(handler_calls: list[Call]) -> None:
    message = envelope("thing.happened")

    assert handle_event.apply(kwargs={"event": message}).successful()
    assert handle_event.apply(kwargs={"event": message}).successful()  # redelivered, or published twice

    assert len(handler_calls) == 1
    inbox = InboxEvent.objects.get()
    assert (inbox.event_id, inbox.type, inbox.source) == (message["id"], "thing.happened", "orders")


def test_a_failed_attempt_leaves_no_inbox_row_so_the_retry_runs_the_handler() -> None:
    event = Event.from_message(envelope("thing.happened"))
    effects: list[str] = []

    def failing(event: Event) -> None:
        InboxEvent.objects.create(event_id="side-effect-in-the-same-transaction", type="x")
        raise ConnectionRefusedError("the mail server is down")

    with pytest.raises(ConnectionRefusedError):
        handle_once(event, failing)
    assert not InboxEvent.objects.exists()  # the inbox row and the handler's own writes rolled back together

    assert handle_once(event, lambda event: effects.append(event.id)) is True
    assert handle_once(event, lambda event: effects.append(event.id)) is False
    assert effects == [event.id]


def test_dead_letters_command_lists_without_removing_and_redrives_one(
    event_broker: EventBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = envelope("thing.broken"), envelope("thing.broken")
    for message in (first, second):
        dead_letter_send(queue="test.events", event=message, attempts=3, error="ValueError('a bug')")

    call_command("dead_letters", "list")
    listed = capsys.readouterr().out
    assert first["id"] in listed
    assert second["id"] in listed
    assert "2 dead letter(s) listed" in listed
    assert dead_letter_count("test.events") == 2

    call_command("dead_letters", "redrive", "--id", first["id"])
    assert "1 dead letter(s) redriven" in capsys.readouterr().out

    # The redriven event is back on the consumer's own queue with a fresh attempt count; the other stays
    with event_broker.connection() as connection:
        redriven = Queue("test.events")(connection.default_channel).get(no_ack=True)
    assert redriven is not None
    assert redriven.headers["task"] == "events.handle"
    assert redriven.headers["retries"] == 0
    assert redriven.decode()[1] == {"event": first}
    assert [letter.event_id for letter in dead_letter_list("test.events")] == [second["id"]]


def test_redriving_an_unknown_event_fails_and_keeps_the_others(event_broker: EventBroker) -> None:
    dead_letter_send(queue="test.events", event=envelope("thing.broken"), attempts=3, error="boom")

    with pytest.raises(CommandError, match="redrove 0 of 1"):
        call_command("dead_letters", "redrive", "--id", "no-such-event")

    assert dead_letter_count("test.events") == 1


def test_dead_letters_command_refuses_an_unknown_queue(event_broker: EventBroker) -> None:
    with pytest.raises(CommandError, match="unknown queue"):
        call_command("dead_letters", "list", "--queue", "other.events")


def test_redrive_all_sends_every_dead_letter_back(event_broker: EventBroker) -> None:
    for _ in range(3):
        dead_letter_send(queue="test.events", event=envelope("thing.broken"), attempts=3, error="boom")

    assert len(dead_letter_redrive("test.events")) == 3

    assert dead_letter_count("test.events") == 0
    with event_broker.connection() as connection:
        assert Queue("test.events")(connection.default_channel).queue_declare(passive=True).message_count == 3
