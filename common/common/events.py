"""Cross-service events over a topic exchange: at least once out, exactly once in effect.

``publish_event`` is the one seam through which services announce what happened (``user.created``,
``order.confirmed``, ...). It does not talk to the broker: it writes the event into the service's
**outbox** table, in the database transaction of the state change it announces, so the change and its
announcement commit or roll back together. Call it inside that ``transaction.atomic()`` block; outside one
it raises ``OutsideTransaction`` (an event about a change that might roll back, or one written after a
commit that a crash could have cut short, is exactly what the outbox exists to rule out).

The relay (:mod:`common.outbox`, run as ``manage.py relay_outbox``) then sends each pending row as a
versioned JSON envelope, a Celery task message, to the durable topic exchange ``events`` with the event type
as routing key, with publisher confirms and persistent delivery, and marks it sent. Each consuming service
declares its own durable queue bound to the types it wants (:func:`event_queue`) plus a dead-letter queue
(:func:`dead_letter_queue`), and runs a Celery worker on it; the worker's ``events.handle`` task
(:mod:`common.tasks`) records the event id in the service's **inbox** in the same transaction as the
handler's effect (:mod:`common.inbox`), so a redelivered or re-published event has no second effect.

Models: ``common`` holds none. Each service owns two small concrete models, named by the settings
``OUTBOX_MODEL`` and ``INBOX_MODEL`` (``"messaging.OutboxEvent"``), whose fields are listed in the README.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import current_app
from django.apps import apps
from django.conf import settings
from django.db import models, router, transaction
from kombu import Exchange, Queue, binding

from common.request_id import current_or_new_request_id

logger = logging.getLogger(__name__)

EVENTS_EXCHANGE = Exchange("events", type="topic", durable=True)
HANDLE_TASK_NAME = "events.handle"
DEAD_LETTER_SUFFIX = ".dead"
RETRY_QUEUE_IDLE_MS = 10 * 60 * 1000  # an unused retry-delay queue is deleted this long after its TTL


class OutsideTransaction(RuntimeError):
    """``publish_event`` was called outside ``transaction.atomic()``: a programming error, not bad input."""


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]
    version: int = 1
    source: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    request_id: str = ""
    # What the event is about (the order's id for order.*): lets a consumer order or group by it.
    aggregate_id: str = ""
    # W3C trace context (``traceparent``, ``tracestate``) of the request that caused the event, so a
    # consumer's work can join that trace; empty until tracing is installed.
    trace_context: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Event:
        return cls(
            type=message["type"],
            data=message["data"],
            version=int(message.get("version", 1)),
            source=message.get("source", ""),
            id=message["id"],
            occurred_at=message["occurred_at"],
            request_id=message.get("request_id", ""),
            aggregate_id=str(message.get("aggregate_id") or ""),
            trace_context=dict(message.get("trace_context") or {}),
        )


def publish_event(
    event_type: str, data: dict[str, Any], *, version: int = 1, aggregate_id: str | int | None = None
) -> Event:
    """Record ``event_type`` in this service's outbox, in the current transaction; the relay sends it once
    the transaction has committed. Must be called inside the ``transaction.atomic()`` block that makes the
    state change the event announces."""
    model = outbox_model()
    if not transaction.get_connection(router.db_for_write(model)).in_atomic_block:
        raise OutsideTransaction(
            f"publish_event({event_type!r}) must run inside the transaction of the change it announces"
        )
    event = Event(
        type=event_type,
        data=data,
        version=version,
        source=settings.SERVICE_NAME,
        request_id=current_or_new_request_id(),
        aggregate_id="" if aggregate_id is None else str(aggregate_id),
        trace_context=current_trace_context(),
    )
    model.objects.create(
        id=event.id,
        type=event.type,
        version=event.version,
        source=event.source,
        aggregate_id=event.aggregate_id,
        data=event.data,
        occurred_at=datetime.fromisoformat(event.occurred_at),
        request_id=event.request_id,
        trace_context=event.trace_context,
    )
    logger.info("recorded %s %s in the outbox", event_type, event.id)
    return event


def event_from_outbox(row: Any) -> Event:
    return Event(
        type=row.type,
        data=row.data,
        version=row.version,
        source=row.source,
        id=str(row.id),
        occurred_at=row.occurred_at.astimezone(UTC).isoformat(),
        request_id=row.request_id,
        aggregate_id=row.aggregate_id,
        trace_context=dict(row.trace_context or {}),
    )


# How long the relay waits for the broker's confirm of one publish. A confirm lost on a half-open connection
# would otherwise hold the relay for ever; shorter than the outbox lease (OUTBOX_LEASE_SECONDS, 30 s), so a
# row is never claimed by another relay while this one still waits for its confirm.
DEFAULT_CONFIRM_TIMEOUT = 10.0


def send_event(event: Event, *, retry_policy: dict[str, Any] | None = None) -> None:
    """Put ``event`` on the events exchange now: persistent, and (RabbitMQ) confirmed by the broker before
    this returns (``confirm_publish`` in the transport options), or an error after
    ``OUTBOX_CONFIRM_TIMEOUT`` seconds without a confirm (the relay then sends it again later: a duplicate
    at worst, which consumers' inboxes absorb). Only the relay and tests call this.

    Not ``mandatory``: an event no queue is bound to yet is confirmed and dropped by RabbitMQ, as publish/
    subscribe means; the consumers' queues are declared durable by ``setup_broker`` before anything is
    published, so a subscriber that is down still gets its events."""
    current_app.send_task(
        HANDLE_TASK_NAME,
        kwargs={"event": asdict(event)},
        task_id=event.id,
        exchange=EVENTS_EXCHANGE,
        routing_key=event.type,
        declare=[EVENTS_EXCHANGE],
        delivery_mode=2,  # persistent
        retry=True,
        retry_policy=retry_policy or {"max_retries": 1, "interval_start": 0, "interval_step": 0.5},
        confirm_timeout=float(getattr(settings, "OUTBOX_CONFIRM_TIMEOUT", DEFAULT_CONFIRM_TIMEOUT)),
    )


def current_trace_context() -> dict[str, str]:
    """The W3C trace context of the current span when OpenTelemetry is installed, else empty."""
    try:
        from opentelemetry import propagate  # optional: installed by the tracing issue
    except ImportError:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def outbox_model() -> type[models.Model]:
    return apps.get_model(settings.OUTBOX_MODEL)


def has_outbox() -> bool:
    return bool(getattr(settings, "OUTBOX_MODEL", ""))


def own_event_queue_name() -> str:
    return f"{settings.SERVICE_NAME}.events"


def event_queue(service: str, event_types: Iterable[str], *, delivery_limit: int | None = None) -> Queue:
    """The durable queue through which ``service`` receives the given event types.

    With ``delivery_limit`` (the services pass ``EVENT_DELIVERY_LIMIT``) it is a RabbitMQ quorum queue that
    counts deliveries itself: a message delivered once and then ``delivery_limit`` times more without an
    outcome (its worker died, or overran the hard time limit, each time) is dead-lettered by RabbitMQ to
    ``<queue>.dead``, so it cannot crash workers forever. kombu's filesystem broker ignores queue arguments:
    there the limit does not hold.
    """
    name = f"{service}.events"
    return Queue(
        name,
        [binding(EVENTS_EXCHANGE, routing_key=event_type) for event_type in event_types],
        durable=True,
        queue_arguments=None if delivery_limit is None else quorum_queue_arguments(name, delivery_limit),
    )


def quorum_queue_arguments(queue_name: str, delivery_limit: int) -> dict[str, Any]:
    if delivery_limit < 1:
        raise ValueError(f"the delivery limit must be at least 1, not {delivery_limit}")
    dead = dead_letter_queue_name(queue_name)
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": "",  # the default exchange: the routing key names the queue
        "x-dead-letter-routing-key": dead,
        # At-least-once dead-lettering (RabbitMQ 3.10+): the message leaves this queue only once
        # <queue>.dead has confirmed it; the default, at-most-once, may drop it. It requires reject-publish.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def is_quorum(queue: Queue) -> bool:
    return (queue.queue_arguments or {}).get("x-queue-type") == "quorum"


def retry_delay_queue(queue_name: str, delay_seconds: float) -> Queue:
    """A queue where a retry of ``queue_name``'s task waits ``delay_seconds`` before RabbitMQ moves it back
    (message TTL, then dead-lettered to ``queue_name`` through the default exchange). One queue per delay,
    named after it, so every message in one expires in arrival order and its arguments never change.

    Used in place of Celery's countdown once a quorum queue is configured (see :mod:`common.tasks`).
    It expires (is deleted by RabbitMQ) some minutes after it was last used, after its messages left it.
    """
    ttl = max(round(delay_seconds * 1000), 0)
    name = f"{queue_name}.retry.{ttl}ms"
    return Queue(
        name,
        exchange="",
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-message-ttl": ttl,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue_name,
            "x-expires": ttl + RETRY_QUEUE_IDLE_MS,
        },
    )


def dead_letter_queue_name(queue_name: str) -> str:
    return queue_name + DEAD_LETTER_SUFFIX


def dead_letter_queue(queue_name: str) -> Queue:
    """Where the events a consumer of ``queue_name`` gave up on wait for a person (see
    :mod:`common.dead_letters`): a durable queue reached through the default exchange by its name."""
    name = dead_letter_queue_name(queue_name)
    return Queue(name, exchange="", routing_key=name, durable=True)
