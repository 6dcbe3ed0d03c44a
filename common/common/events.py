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


def send_event(event: Event, *, retry_policy: dict[str, Any] | None = None) -> None:
    """Put ``event`` on the events exchange now: persistent, and (RabbitMQ) confirmed by the broker before
    this returns (``confirm_publish`` in the transport options). Only the relay and tests call this."""
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


def event_queue(service: str, event_types: Iterable[str]) -> Queue:
    """The durable queue through which ``service`` receives the given event types."""
    return Queue(
        f"{service}.events",
        [binding(EVENTS_EXCHANGE, routing_key=event_type) for event_type in event_types],
        durable=True,
    )


def dead_letter_queue_name(queue_name: str) -> str:
    return queue_name + DEAD_LETTER_SUFFIX


def dead_letter_queue(queue_name: str) -> Queue:
    """Where the events a consumer of ``queue_name`` gave up on wait for a person (see
    :mod:`common.dead_letters`): a durable queue reached through the default exchange by its name."""
    name = dead_letter_queue_name(queue_name)
    return Queue(name, exchange="", routing_key=name, durable=True)
