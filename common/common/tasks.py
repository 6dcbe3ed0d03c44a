"""The task every consuming service's worker runs for an incoming event (see :mod:`common.events`)."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import OperationalError
from django.utils.module_loading import import_string

from common.events import HANDLE_TASK_NAME, Event, own_event_queue_name
from common.request_id import current_or_new_request_id, reset_request_id, set_request_id

logger = logging.getLogger(__name__)

# Failures worth another attempt: the database or the mail server briefly unreachable (smtplib's and
# socket errors are OSErrors). Anything else is a bug, and retrying would only repeat it.
TRANSIENT_ERRORS = (OSError, OperationalError)


@shared_task(name=HANDLE_TASK_NAME, bind=True, acks_late=True, max_retries=5)
def handle_event(self: Any, event: dict[str, Any]) -> None:
    handler_path = settings.EVENT_HANDLERS.get(event.get("type"))
    if handler_path is None:
        logger.warning("no handler for event %s %s; ignored", event.get("type"), event.get("id"))
        return
    parsed = Event.from_message(event)
    token = set_request_id(parsed.request_id or current_or_new_request_id())
    try:
        import_string(handler_path)(parsed)
    except TRANSIENT_ERRORS as exc:
        # Back onto this service's own queue through the default exchange: Celery's default retry would
        # re-publish to the topic exchange and hand the event to every other subscriber again. ``queue``
        # too: without it Celery's router fills in task_default_queue, and a direct default queue makes it
        # replace our routing key with that queue's name (e.g. users.tasks), which no worker consumes.
        queue = own_event_queue_name()
        raise self.retry(
            exc=exc,
            countdown=min(2**self.request.retries, 60),
            queue=queue,
            exchange="",
            routing_key=queue,
        ) from exc
    finally:
        reset_request_id(token)
