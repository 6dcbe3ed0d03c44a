"""Dead letters: events a consumer gave up on after ``EVENT_MAX_ATTEMPTS`` tries, kept for a person.

Two kinds reach ``<queue>.dead``: ours, published by the worker when a handler raised on its last attempt;
and, on RabbitMQ, the task message itself, dead-lettered by the quorum queue once it was delivered more
than ``EVENT_DELIVERY_LIMIT`` times without an outcome (the handler killed its worker, or overran the hard
time limit). ``dead_letter_from_message`` reads both the same way.

Each consumer queue ``<service>.events`` has a durable ``<service>.events.dead`` queue (declared by
``manage.py setup_broker``). The worker's task publishes the failed event there itself, with publisher
confirms, before acknowledging the original. We route a failed handler's event explicitly rather than
through RabbitMQ's dead-lettering because (a) kombu's filesystem broker (embedded mode) has none, and one
code path for both brokers is the one that gets tested; (b) the explicit message carries the error and the
attempt count, which a DLX copy does not. RabbitMQ's own dead-lettering (the quorum queue's
``x-delivery-limit``) covers only what our code cannot see: a worker that died handling the message.

A dead letter is a small JSON document (not a task message: a worker pointed at the dead queue by mistake
must not run it): the event envelope, the queue it came from, the attempts, the last error, when.
``manage.py dead_letters list`` reads them without removing them (fetched unacknowledged, then given back
when the channel closes); ``manage.py dead_letters redrive [--id EVENT_ID]`` sends them back to their queue
with a fresh attempt count and only then removes them. A redriven event that was in fact handled meanwhile
is skipped by the inbox.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import current_app
from kombu import Connection, Producer

from common.events import HANDLE_TASK_NAME, dead_letter_queue, dead_letter_queue_name

logger = logging.getLogger(__name__)

LIST_LIMIT = 1000  # what one listing or redrive looks at: held unacknowledged until the channel closes


@dataclass(frozen=True)
class DeadLetter:
    event: dict[str, Any]
    queue: str  # the consumer queue it came from, and goes back to on redrive
    attempts: int
    error: str
    dead_at: str

    @property
    def event_id(self) -> str:
        return str(self.event.get("id", ""))

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> DeadLetter:
        return cls(
            event=body["event"],
            queue=body["queue"],
            attempts=int(body.get("attempts", 0)),
            error=str(body.get("error", "")),
            dead_at=str(body.get("dead_at", "")),
        )


def dead_letter_from_message(queue: str, body: Any, headers: dict[str, Any]) -> DeadLetter:
    """A dead letter as found in ``<queue>.dead``: ours (a JSON document), or the task message itself, as
    RabbitMQ dead-lettered it after ``x-delivery-limit`` deliveries (see :func:`common.events.event_queue`)."""
    if isinstance(body, dict):
        return DeadLetter.from_body(body)
    _args, kwargs, _embed = body  # Celery's task message (protocol 2)
    deaths = headers.get("x-death") or [{}]
    death = deaths[0]
    died = death.get("time")
    return DeadLetter(
        event=kwargs["event"],
        queue=queue,
        # The attempt the worker never finished is counted once: Celery's retries before it, plus it.
        attempts=int(headers.get("retries") or 0) + 1,
        error=_rabbitmq_death_reason(str(death.get("reason", "delivery_limit"))),
        dead_at=died.astimezone(UTC).isoformat() if isinstance(died, datetime) else str(died or ""),
    )


def _rabbitmq_death_reason(reason: str) -> str:
    if reason == "delivery_limit":
        return (
            "dead-lettered by RabbitMQ (delivery_limit): given back more often than its queue's "
            "x-delivery-limit (EVENT_DELIVERY_LIMIT) without an outcome; the worker died or overran its hard "
            "time limit handling it"
        )
    if reason == "rejected":
        return (
            "dead-lettered by RabbitMQ (rejected): the worker refused the message without requeueing it, e.g. "
            "when publishing its retry failed; see the worker's log at dead_at"
        )
    return f"dead-lettered by RabbitMQ ({reason})"


def dead_letter_send(*, queue: str, event: dict[str, Any], attempts: int, error: str) -> None:
    """Put ``event`` on ``queue``'s dead-letter queue: persistent, confirmed by RabbitMQ before returning."""
    body = {
        "event": event,
        "queue": queue,
        "attempts": attempts,
        "error": error[:2000],
        "dead_at": datetime.now(UTC).isoformat(),
    }
    dead = dead_letter_queue(queue)
    with current_app.connection_for_write() as connection:
        producer = Producer(connection.default_channel)
        producer.publish(
            body,
            exchange="",
            routing_key=dead.name,
            serializer="json",
            delivery_mode=2,
            declare=[dead],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
        )
    logger.error("event %s %s dead after %s attempts: %s", event.get("type"), event.get("id"), attempts, error)


def dead_letter_count(queue: str, connection: Connection | None = None) -> int:
    """Dead letters waiting for ``queue`` (declaring its dead-letter queue if it does not exist yet)."""
    if connection is None:
        with current_app.connection_for_write() as own:
            return dead_letter_count(queue, own)
    dead = dead_letter_queue(queue)(connection.default_channel)
    return int(dead.queue_declare().message_count)


def dead_letter_list(queue: str) -> list[DeadLetter]:
    return _visit(queue, redrive_ids=None)


def dead_letter_redrive(queue: str, *, event_ids: set[str] | None = None) -> list[DeadLetter]:
    """Send the dead letters of ``queue`` (all, or those of ``event_ids``) back to it; the ones redriven."""
    return _visit(queue, redrive_ids=event_ids if event_ids is not None else set(), redrive_all=event_ids is None)


def _visit(queue: str, *, redrive_ids: set[str] | None, redrive_all: bool = False) -> list[DeadLetter]:
    picked: list[DeadLetter] = []
    with current_app.connection_for_write() as connection:
        # Its own channel: closing it gives back every message we fetched and did not acknowledge.
        channel = connection.channel()
        try:
            dead = dead_letter_queue(queue)(channel)
            dead.declare()
            for _ in range(LIST_LIMIT):
                message = dead.get(no_ack=False, accept=["json"])
                if message is None:
                    break
                letter = dead_letter_from_message(queue, message.decode(), message.headers or {})
                if redrive_ids is None:
                    picked.append(letter)
                elif redrive_all or letter.event_id in redrive_ids:
                    _send_back(letter)
                    message.ack()  # only once the queue has it again
                    picked.append(letter)
        finally:
            channel.close()
    return picked


def _send_back(letter: DeadLetter) -> None:
    # To the consumer's own queue through the default exchange (as a retry goes): other subscribers of the
    # event type got it already. Retries start from zero: this is a fresh run of N attempts after a fix.
    current_app.send_task(
        HANDLE_TASK_NAME,
        kwargs={"event": letter.event},
        task_id=letter.event_id,
        queue=letter.queue,
        exchange="",
        routing_key=letter.queue,
        delivery_mode=2,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
    )
    logger.info("redrove event %s to %s", letter.event_id, letter.queue)


__all__ = [
    "DeadLetter",
    "dead_letter_count",
    "dead_letter_from_message",
    "dead_letter_list",
    "dead_letter_queue_name",
    "dead_letter_redrive",
    "dead_letter_send",
]
