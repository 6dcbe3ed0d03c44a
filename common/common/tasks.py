"""The task every consuming service's worker runs for an incoming event (see :mod:`common.events`).

Each event is handled through the inbox (:mod:`common.inbox`): at most one effect per event id. A handler
that raises is retried from this service's own queue after an exponential backoff
(``EVENT_RETRY_BACKOFF`` * 2^(attempt-1), at most ``EVENT_RETRY_BACKOFF_MAX`` seconds); the attempt that
makes ``EVENT_MAX_ATTEMPTS`` goes to the queue's dead-letter queue (:mod:`common.dead_letters`) instead,
where a person can look at it and re-drive it after a fix. Every exception counts, not only transient
ones: a bug fixed and deployed within the backoff window heals itself, and a poison event costs N tries
at most.

A message whose handling kills the worker process (or overruns the hard time limit: ``acks_on_timeout``
is off, so it is given back rather than acknowledged) never reaches this code's count: the broker gives it
back with the same attempt number. On RabbitMQ the consumer queue is a
quorum queue with ``x-delivery-limit`` = ``EVENT_DELIVERY_LIMIT`` (:func:`common.events.event_queue`):
RabbitMQ counts those deliveries and dead-letters the message itself to the same ``<queue>.dead``. With a
quorum queue configured, Celery (5.5+) would send a countdown retry through its "native delayed delivery"
exchanges, which route by event type back through the topic exchange, i.e. to every subscriber again (and
fail outright on a queue bound only by bindings); so a retry then waits in a per-delay queue instead
(:func:`common.events.retry_delay_queue`), from which RabbitMQ moves it back to our queue alone.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from celery import Celery, shared_task
from celery.exceptions import Reject
from celery.utils.quorum_queues import detect_quorum_queues
from django.conf import settings
from django.utils.module_loading import import_string
from opentelemetry.trace import SpanKind

from common.dead_letters import dead_letter_send
from common.events import HANDLE_TASK_NAME, Event, own_event_queue_name, retry_delay_queue
from common.inbox import handle_once
from common.request_id import current_or_new_request_id, reset_request_id, set_request_id
from common.tracing import continued_from, in_trace_of

logger = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_RETRY_BACKOFF = 1.0
DEFAULT_RETRY_BACKOFF_MAX = 60.0


def max_attempts() -> int:
    return max(int(getattr(settings, "EVENT_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)), 1)


def uses_quorum_queues(app: Celery) -> bool:
    """Whether Celery would reroute a countdown through native delayed delivery (RabbitMQ, any quorum queue)."""
    with app.connection_for_write() as connection:  # not connected: only its transport's type is read
        return detect_quorum_queues(app, connection.transport.driver_type)[0]


def retry_countdown(attempt: int) -> float:
    """Seconds before the retry that follows failed attempt number ``attempt`` (1-based)."""
    base = float(getattr(settings, "EVENT_RETRY_BACKOFF", DEFAULT_RETRY_BACKOFF))
    ceiling = float(getattr(settings, "EVENT_RETRY_BACKOFF_MAX", DEFAULT_RETRY_BACKOFF_MAX))
    return min(base * 2 ** (attempt - 1), ceiling)


# max_retries=None: the attempt count is ours (EVENT_MAX_ATTEMPTS), and what happens at the end is a dead
# letter, not Celery's MaxRetriesExceededError. acks_on_timeout=False: Celery's default acknowledges a
# message whose handler overran the hard time limit, i.e. drops the event; given back instead, it counts
# against the quorum queue's delivery limit like a crash. (A handler that raised is acknowledged as before:
# by then it is retried or dead-lettered by the code below.)
@shared_task(
    name=HANDLE_TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    acks_on_timeout=False,
    max_retries=None,
)
def handle_event(self: Any, event: dict[str, Any]) -> None:
    handler_path = settings.EVENT_HANDLERS.get(event.get("type"))
    if handler_path is None:
        logger.warning("no handler for event %s %s; ignored", event.get("type"), event.get("id"))
        return
    parsed = Event.from_message(event)
    token = set_request_id(parsed.request_id or current_or_new_request_id())
    # Celery's instrumentation has already continued the trace from the message headers; an event that
    # arrives without them (re-driven from a dead-letter queue, published by hand) continues from the
    # trace context the outbox stored with it.
    carrier = {} if in_trace_of(parsed.trace_context) else parsed.trace_context
    try:
        with continued_from(carrier, f"handle {parsed.type}", kind=SpanKind.INTERNAL) if carrier else nullcontext():
            handle_once(parsed, import_string(handler_path))
    except Exception as exc:
        attempt = self.request.retries + 1
        queue = own_event_queue_name()
        if attempt >= max_attempts():
            try:
                dead_letter_send(queue=queue, event=event, attempts=attempt, error=repr(exc))
            except Exception as publish_error:
                # Not confirmed: give the message back to the broker rather than acknowledge it into nothing.
                logger.exception("could not dead-letter event %s; requeued", parsed.id)
                raise Reject(publish_error, requeue=True) from exc
            raise  # recorded as FAILURE; acks_late acknowledges a failed task, and its dead letter is safe
        countdown = retry_countdown(attempt)
        logger.warning(
            "event %s %s failed (attempt %s of %s), retried in %ss: %r",
            parsed.type,
            parsed.id,
            attempt,
            max_attempts(),
            countdown,
            exc,
        )
        # Back onto this service's own queue through the default exchange: Celery's default retry would
        # re-publish to the topic exchange and hand the event to every other subscriber again. ``queue``
        # too: without it Celery's router fills in task_default_queue, and a direct default queue makes it
        # replace our routing key with that queue's name (e.g. users.tasks), which no worker consumes.
        if uses_quorum_queues(self.app):
            # countdown=0: no ETA for Celery to reroute or hold; the delay queue's TTL is the backoff.
            delay = retry_delay_queue(queue, countdown)
            raise self.retry(exc=exc, countdown=0, queue=delay, exchange="", routing_key=delay.name) from exc
        raise self.retry(exc=exc, countdown=countdown, queue=queue, exchange="", routing_key=queue) from exc
    finally:
        reset_request_id(token)
