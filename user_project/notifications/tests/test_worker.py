"""The event path for real: a Celery worker, in a thread of the test process, consuming from a real broker.

Every test runs against the private filesystem broker of the ``event_broker`` fixture, with this service's
real queue (``users.events``) and bindings, declared as ``manage.py setup_broker`` declares them. When
BROKER_URL names a RabbitMQ (CI), every test runs against it too: there under a test-only service name and
test-only event types, so that a running system's queues never see one of these messages, and its queues
are deleted afterwards.

The worker runs in another thread with its own database connection: the tests commit their rows
(``transaction=True``) so that it sees them.
"""

from __future__ import annotations

import os
import smtplib
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import StringIO
from typing import Any

import pytest
from celery import signals
from celery.contrib.testing.worker import start_worker
from django.core.mail import EmailMessage
from django.core.management import call_command
from django.db import transaction
from kombu import Queue, binding

from common.dead_letters import dead_letter_count, dead_letter_list, dead_letter_redrive
from common.events import (
    EVENTS_EXCHANGE,
    Event,
    dead_letter_queue,
    event_queue,
    own_event_queue_name,
    publish_event,
    retry_delay_queue,
    send_event,
)
from common.outbox import relay_pending
from common.tasks import retry_countdown
from common.testing import EventBroker
from messaging.models import InboxEvent, OutboxEvent
from notifications.models import SentEmail
from notifications.tests.backends import flaky_smtp_fails_next
from user_service.celery import app as celery_app
from users.models import User
from users.tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_SECONDS = 15.0
FLAKY_BACKEND = "notifications.tests.backends.FlakySmtpBackend"


class EventBus:
    """The broker a test's worker consumes from: the queue it reads, and the event types published there."""

    def __init__(self, *, queue: Queue, type_suffix: str = "", delete_queues: bool = False) -> None:
        self.queue = queue
        self._type_suffix = type_suffix
        self._delete_queues = delete_queues
        self._declared: list[Queue] = []

    def event_type(self, name: str) -> str:
        """The type under which this bus publishes events of type ``name``."""
        return name + self._type_suffix

    def declare(self, queue: Queue) -> None:
        with celery_app.connection_for_write() as connection:
            EVENTS_EXCHANGE(connection.default_channel).declare()
            queue(connection.default_channel).declare()
        self._declared.append(queue)

    def subscribe(self, event_type: str) -> Callable[[], list[str]]:
        """Bind another service's queue to ``event_type`` on the events exchange; the returned function
        drains it and gives the ids of the events that reached it."""
        queue = Queue(f"test.other.{uuid.uuid4().hex}", [binding(EVENTS_EXCHANGE, routing_key=event_type)])
        self.declare(queue)

        def drain() -> list[str]:
            ids: list[str] = []
            with celery_app.connection_for_write() as connection:
                bound = queue(connection.default_channel)
                while (message := bound.get(no_ack=True)) is not None:
                    _args, kwargs, _embed = message.decode()
                    ids.append(kwargs["event"]["id"])
            return ids

        return drain

    def publish(self, event_type: str, data: dict[str, Any]) -> Event:
        """What a service does: record the event in the transaction of its change, then the relay sends it."""
        with transaction.atomic():
            event = publish_event(self.event_type(event_type), data)
        assert relay_pending() >= 1
        return event

    def dead_letters(self) -> int:
        return dead_letter_count(self.queue.name)

    def messages_waiting(self) -> int:
        """Messages in the worker's queue that nobody holds: none are left once every event was handled."""
        with celery_app.connection_for_write() as connection:
            return self.queue(connection.default_channel).queue_declare(passive=True).message_count

    def close(self) -> None:
        if not self._delete_queues:
            return
        # On RabbitMQ a retry waits in a queue of its delay (common.events.retry_delay_queue): those too.
        delays = [retry_delay_queue(self.queue.name, retry_countdown(attempt)) for attempt in range(1, 10)]
        with celery_app.connection_for_write() as connection:
            for queue in [*self._declared, *{delay.name: delay for delay in delays}.values()]:
                queue(connection.default_channel).delete()


@pytest.fixture(params=["filesystem", "amqp"])
def bus(request: pytest.FixtureRequest, event_broker: EventBroker, settings: Any) -> Iterator[EventBus]:
    if request.param == "filesystem":
        # This service's own queue and bindings, in the test's private broker.
        call_command("setup_broker", stdout=StringIO())
        yield EventBus(queue=celery_app.amqp.queues[own_event_queue_name()])
        return

    if not os.environ.get("BROKER_URL", "").startswith("amqp://"):
        pytest.skip("BROKER_URL does not name a RabbitMQ")
    event_broker.stop()  # back to the broker the settings name: BROKER_URL's RabbitMQ
    # A service and event types of this test alone: a running system's users.events queue is bound to
    # user.created, and must neither receive these events nor lose its own to this worker.
    tag = f"test{uuid.uuid4().hex[:12]}"
    settings.SERVICE_NAME = tag
    settings.EVENT_HANDLERS = {f"{event_type}.{tag}": path for event_type, path in settings.EVENT_HANDLERS.items()}
    queue = event_queue(settings.SERVICE_NAME, settings.EVENT_HANDLERS, delivery_limit=settings.EVENT_DELIVERY_LIMIT)
    assert queue.name == own_event_queue_name()
    celery_app.amqp.queues.add(queue)  # as the worker's app holds users.events, from CELERY_TASK_QUEUES
    bus = EventBus(queue=queue, type_suffix=f".{tag}", delete_queues=True)
    try:
        bus.declare(queue)
        bus.declare(dead_letter_queue(queue.name))
        yield bus
    finally:
        bus.close()
        celery_app.amqp.queues.deselect([queue.name])
        celery_app.amqp.queues.pop(queue.name, None)


@contextmanager
def running_worker(bus: EventBus) -> Iterator[None]:
    """A worker consuming the bus's queue, as ``celery worker --queues users.events`` does, in a thread.

    The threads pool runs tasks off the consumer's event loop, as the production prefork pool does. (With
    the solo pool on RabbitMQ, a message published after a task had finished waited ~10 s to be received.)
    """
    with start_worker(
        celery_app,
        queues=[bus.queue.name],
        pool="threads",
        concurrency=1,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=10.0,
    ) as worker:
        yield
        # Left to itself the worker notices it should stop only after two 2-second waits for messages;
        # the remote-control shutdown command (addressed to this worker alone) stops it at once.
        celery_app.control.shutdown(destination=[worker.hostname])


@dataclass
class TaskLog:
    """What the worker did with each task id (= event id), recorded from Celery's signals in its thread."""

    attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    outcomes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[BaseException]] = field(default_factory=lambda: defaultdict(list))

    def on_prerun(self, task_id: str, **kwargs: Any) -> None:
        self.attempts[task_id] += 1

    def on_postrun(self, task_id: str, state: str, **kwargs: Any) -> None:
        self.outcomes[task_id].append(state)

    def on_failure(self, task_id: str, exception: BaseException, **kwargs: Any) -> None:
        self.errors[task_id].append(exception)

    def on_retry(self, request: Any, reason: Any, **kwargs: Any) -> None:
        # reason: the Retry exception, whose exc is what the handler raised
        self.errors[request.id].append(getattr(reason, "exc", reason))

    def wait_for(self, task_id: str, state: str) -> None:
        """Wait until an attempt at ``task_id`` ended in ``state`` (SUCCESS, FAILURE, RETRY)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while state not in self.outcomes[task_id]:
            if time.monotonic() > deadline:
                pytest.fail(f"no attempt at {task_id} ended in {state} within {WAIT_SECONDS}s: {dict(self.outcomes)}")
            time.sleep(0.02)


@pytest.fixture
def task_log() -> Iterator[TaskLog]:
    log = TaskLog()
    receivers = ((signals.task_prerun, log.on_prerun), (signals.task_postrun, log.on_postrun))
    receivers += ((signals.task_failure, log.on_failure), (signals.task_retry, log.on_retry))
    for signal, receiver in receivers:
        signal.connect(receiver, weak=False)
    yield log
    for signal, receiver in receivers:
        signal.disconnect(receiver)


@pytest.fixture(autouse=True)
def fast_retries(bus: EventBus, settings: Any) -> None:
    # The worker thread reads these at each failure: tens of milliseconds rather than seconds between tries.
    # After ``bus``: switching to RabbitMQ restores the settings from before the private broker.
    settings.EVENT_RETRY_BACKOFF = 0.05
    settings.EVENT_RETRY_BACKOFF_MAX = 0.2
    settings.EVENT_MAX_ATTEMPTS = 4


@pytest.fixture
def customer() -> User:
    return UserFactory(email="ann@example.com", name="Ann Example")


@pytest.fixture
def flaky_smtp(settings: Any) -> Iterator[Callable[[int], None]]:
    settings.EMAIL_BACKEND = FLAKY_BACKEND
    flaky_smtp_fails_next(0)
    yield flaky_smtp_fails_next
    flaky_smtp_fails_next(0)


def user_created_data(user: User) -> dict[str, Any]:
    return {"user_id": user.id, "email": user.email, "name": user.name}


def test_worker_consumes_published_user_created_and_sends_the_welcome_email(
    bus: EventBus, task_log: TaskLog, customer: User, mailoutbox: list[EmailMessage]
) -> None:
    with running_worker(bus):
        event = bus.publish("user.created", user_created_data(customer))
        task_log.wait_for(event.id, "SUCCESS")

    assert task_log.attempts[event.id] == 1
    [email] = mailoutbox
    assert email.to == ["ann@example.com"]
    assert email.subject == "Welcome to Shop, Ann Example!"
    sent = SentEmail.objects.get()
    assert str(sent.event_id) == event.id
    assert sent.kind == SentEmail.Kind.WELCOME
    assert bus.messages_waiting() == 0


def test_transient_send_failure_is_retried_on_our_own_queue_and_not_redelivered_to_other_subscribers(
    bus: EventBus,
    task_log: TaskLog,
    customer: User,
    mailoutbox: list[EmailMessage],
    flaky_smtp: Callable[[int], None],
) -> None:
    # Given another service subscribed to the same event, and a mail server that drops the first send
    other_subscriber = bus.subscribe(bus.event_type("user.created"))
    flaky_smtp(1)

    with running_worker(bus):
        event = bus.publish("user.created", user_created_data(customer))
        task_log.wait_for(event.id, "SUCCESS")

    # Then our worker tried twice and sent once
    assert task_log.attempts[event.id] == 2
    assert task_log.outcomes[event.id] == ["RETRY", "SUCCESS"]
    assert [type(error) for error in task_log.errors[event.id]] == [smtplib.SMTPServerDisconnected]
    assert len(mailoutbox) == 1
    assert SentEmail.objects.filter(event_id=event.id).count() == 1
    # and the retry went to our queue alone: the other subscriber got the event once, from the publish
    assert other_subscriber() == [event.id]
    assert bus.messages_waiting() == 0


def test_retry_that_fails_again_is_retried_again_from_our_own_queue_until_the_send_succeeds(
    bus: EventBus,
    task_log: TaskLog,
    customer: User,
    mailoutbox: list[EmailMessage],
    flaky_smtp: Callable[[int], None],
) -> None:
    # Given a mail server that drops two sends: the first retry fails too, and is retried from the message
    # the first retry put on our queue (not from the original delivery through the events exchange)
    flaky_smtp(2)

    with running_worker(bus):
        event = bus.publish("user.created", user_created_data(customer))
        task_log.wait_for(event.id, "SUCCESS")

    assert task_log.outcomes[event.id] == ["RETRY", "RETRY", "SUCCESS"]
    assert [type(error) for error in task_log.errors[event.id]] == [smtplib.SMTPServerDisconnected] * 2
    assert len(mailoutbox) == 1
    assert SentEmail.objects.count() == 1


def test_poison_event_is_tried_exactly_n_times_then_dead_lettered_once_while_others_keep_flowing(
    bus: EventBus, task_log: TaskLog, customer: User, mailoutbox: list[EmailMessage], settings: Any
) -> None:
    with running_worker(bus):
        # Given an event whose handler always raises (int("not-a-number"): ValueError)
        poison = bus.publish("user.created", {"user_id": "not-a-number"})
        # and a good event right behind it
        good = bus.publish("user.created", user_created_data(customer))
        task_log.wait_for(good.id, "SUCCESS")
        task_log.wait_for(poison.id, "FAILURE")

    # Then the poison was tried exactly EVENT_MAX_ATTEMPTS times, then became one dead letter
    assert task_log.attempts[poison.id] == settings.EVENT_MAX_ATTEMPTS
    assert task_log.outcomes[poison.id] == ["RETRY"] * (settings.EVENT_MAX_ATTEMPTS - 1) + ["FAILURE"]
    assert all(isinstance(error, ValueError) for error in task_log.errors[poison.id])
    [letter] = dead_letter_list(bus.queue.name)
    assert letter.event_id == poison.id
    assert letter.attempts == settings.EVENT_MAX_ATTEMPTS
    assert "ValueError" in letter.error
    # and the good one was handled, once
    assert [email.subject for email in mailoutbox] == ["Welcome to Shop, Ann Example!"]
    assert str(SentEmail.objects.get().event_id) == good.id
    assert list(InboxEvent.objects.values_list("event_id", flat=True)) == [good.id]
    assert bus.messages_waiting() == 0


def test_redelivered_or_republished_event_has_no_second_effect(
    bus: EventBus, task_log: TaskLog, customer: User, mailoutbox: list[EmailMessage]
) -> None:
    with running_worker(bus):
        event = bus.publish("user.created", user_created_data(customer))
        task_log.wait_for(event.id, "SUCCESS")
        # When the same event arrives again (a relay that died before marking it sent publishes it again)
        send_event(event)
        send_event(event)
        deadline = time.monotonic() + WAIT_SECONDS
        while task_log.outcomes[event.id].count("SUCCESS") < 3 and time.monotonic() < deadline:
            time.sleep(0.02)

    # Then all three deliveries succeeded, and only the first had an effect
    assert task_log.outcomes[event.id] == ["SUCCESS"] * 3
    assert len(mailoutbox) == 1
    assert SentEmail.objects.count() == 1
    assert InboxEvent.objects.filter(event_id=event.id).count() == 1
    assert OutboxEvent.objects.get(id=event.id).sent_at is not None
    assert bus.messages_waiting() == 0


def test_dead_letter_redriven_after_the_fix_is_handled(
    bus: EventBus,
    task_log: TaskLog,
    customer: User,
    mailoutbox: list[EmailMessage],
    flaky_smtp: Callable[[int], None],
    settings: Any,
) -> None:
    # Given a mail server down for longer than the event's attempts
    flaky_smtp(settings.EVENT_MAX_ATTEMPTS)
    with running_worker(bus):
        event = bus.publish("user.created", user_created_data(customer))
        task_log.wait_for(event.id, "FAILURE")
        assert bus.dead_letters() == 1
        assert mailoutbox == []

        # When the mail server is back and someone re-drives the dead letter
        [redriven] = dead_letter_redrive(bus.queue.name, event_ids={event.id})
        assert redriven.event_id == event.id
        task_log.wait_for(event.id, "SUCCESS")

    # Then the email went out once, and nothing is left dead or waiting
    assert [email.subject for email in mailoutbox] == ["Welcome to Shop, Ann Example!"]
    assert task_log.attempts[event.id] == settings.EVENT_MAX_ATTEMPTS + 1
    assert bus.dead_letters() == 0
    assert bus.messages_waiting() == 0
