"""Cross-service events over a topic exchange.

``publish_event`` is the one seam through which services announce what happened (``user.created``,
``order.confirmed``, ...). An event is a versioned JSON envelope sent as a Celery task message to the
durable topic exchange ``events`` with the event type as routing key. Each consuming service declares its
own durable queue bound to the types it wants (:func:`event_queue`) and runs a Celery worker on it; the
worker's ``events.handle`` task (:mod:`common.tasks`) dispatches to the handler named in the service's
``EVENT_HANDLERS`` setting. A queue nobody bound gets nothing: publishing never knows who listens.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import current_app
from django.conf import settings
from kombu import Exchange, Queue, binding

from common.request_id import current_or_new_request_id

logger = logging.getLogger(__name__)

EVENTS_EXCHANGE = Exchange("events", type="topic", durable=True)
HANDLE_TASK_NAME = "events.handle"


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]
    version: int = 1
    source: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    request_id: str = ""

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
        )


def publish_event(event_type: str, data: dict[str, Any], *, version: int = 1) -> Event:
    """Publish an event now. Call it after the state change has committed (``transaction.on_commit``):
    an event about a rolled-back change must never go out."""
    event = Event(
        type=event_type,
        data=data,
        version=version,
        source=settings.SERVICE_NAME,
        request_id=current_or_new_request_id(),
    )
    current_app.send_task(
        HANDLE_TASK_NAME,
        kwargs={"event": asdict(event)},
        task_id=event.id,
        exchange=EVENTS_EXCHANGE,
        routing_key=event_type,
        declare=[EVENTS_EXCHANGE],
        delivery_mode=2,  # persistent
        retry=True,
        retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2},
    )
    logger.info("published %s %s", event_type, event.id)
    return event


def own_event_queue_name() -> str:
    return f"{settings.SERVICE_NAME}.events"


def event_queue(service: str, event_types: Iterable[str]) -> Queue:
    """The durable queue through which ``service`` receives the given event types."""
    return Queue(
        f"{service}.events",
        [binding(EVENTS_EXCHANGE, routing_key=event_type) for event_type in event_types],
        durable=True,
    )
