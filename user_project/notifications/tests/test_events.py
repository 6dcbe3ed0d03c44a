from io import StringIO

import pytest
from django.core.mail import EmailMessage
from django.core.management import call_command
from kombu import Message, Queue

from common.events import HANDLE_TASK_NAME, Event, publish_event
from common.tasks import handle_event
from common.testing import EventBroker
from messaging.models import InboxEvent
from notifications.models import SentEmail
from users.models import User

# Inside the test's transaction, as publish_event requires; ``relay()`` sends the outbox as relay_outbox does.
pytestmark = pytest.mark.django_db


@pytest.fixture
def bound_broker(event_broker: EventBroker) -> EventBroker:
    """The broker with the exchange and this service's queue declared, as ``manage.py setup_broker`` does."""
    output = StringIO()
    call_command("setup_broker", stdout=output)
    assert "declared queue users.events" in output.getvalue()
    assert "declared queue users.events.dead" in output.getvalue()  # its dead-letter queue
    return event_broker


def take_message(broker: EventBroker, queue_name: str = "users.events") -> Message:
    with broker.connection() as connection:
        message = connection.SimpleQueue(Queue(queue_name, no_declare=True)).get(timeout=2)
        message.ack()
        return message


def queue_is_empty(broker: EventBroker, queue_name: str = "users.events") -> bool:
    with broker.connection() as connection:
        return connection.SimpleQueue(Queue(queue_name, no_declare=True)).qsize() == 0


def test_published_event_lands_in_the_bound_queue_as_an_events_handle_task(bound_broker: EventBroker) -> None:
    event = publish_event("user.created", {"user_id": 7, "email": "ann@example.com", "name": "Ann"})
    assert bound_broker.relay() == 1

    message = take_message(bound_broker)

    assert message.headers["task"] == HANDLE_TASK_NAME
    assert message.headers["id"] == event.id
    _args, kwargs, _embed = message.decode()
    assert kwargs["event"]["type"] == "user.created"
    assert kwargs["event"]["data"] == {"user_id": 7, "email": "ann@example.com", "name": "Ann"}
    assert queue_is_empty(bound_broker)


def test_event_type_we_did_not_bind_never_reaches_our_queue(bound_broker: EventBroker) -> None:
    publish_event("payment.captured", {"payment_id": 1})
    assert bound_broker.relay() == 1

    assert queue_is_empty(bound_broker)


def test_published_event_consumed_by_our_task_sends_the_email(
    bound_broker: EventBroker, customer: User, mailoutbox: list[EmailMessage]
) -> None:
    published = publish_event("user.created", {"user_id": customer.id, "email": customer.email, "name": customer.name})
    bound_broker.relay()

    _args, kwargs, _embed = take_message(bound_broker).decode()
    handle_event.apply(kwargs=kwargs)

    assert Event.from_message(kwargs["event"]).id == published.id
    assert [email.subject for email in mailoutbox] == ["Welcome to Shop, Ann Example!"]
    assert SentEmail.objects.get().event_id.hex == published.id.replace("-", "")
    assert InboxEvent.objects.get().event_id == published.id
