"""The consumer's inbox: an event's id is recorded in the same transaction as its handler's effect.

The broker delivers at least once, and the relay may publish an event twice (see :mod:`common.outbox`), so
a consumer sees duplicates. :func:`handle_once` inserts the event id into the service's inbox table
(``INBOX_MODEL``, primary key ``event_id``) and runs the handler inside one ``transaction.atomic()``: if the
handler raises, the row rolls back with its effect and a retry starts afresh; if it commits, any later copy
finds the row and does nothing. Two copies handled at the same moment meet at the primary key: the second
insert waits for the first transaction and then fails (PostgreSQL), or waits for SQLite's single writer,
and is then treated as already handled.

What the inbox cannot cover is an effect outside the database (an email sent, a call made) followed by a
failed commit: that effect happens again on the retry. Such handlers keep their own record (the
notifications app's ``SentEmail``) and accept that at-least-once cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.apps import apps
from django.conf import settings
from django.db import IntegrityError, models, router, transaction
from django.utils import timezone

from common.events import Event

logger = logging.getLogger(__name__)


def inbox_model() -> type[models.Model]:
    return apps.get_model(settings.INBOX_MODEL)


def handle_once(event: Event, handler: Callable[[Event], object]) -> bool:
    """Run ``handler(event)`` unless this event was already handled here; True when it ran."""
    model = inbox_model()
    with transaction.atomic(using=router.db_for_write(model)):
        try:
            with transaction.atomic(using=router.db_for_write(model)):
                model.objects.create(event_id=event.id, type=event.type, source=event.source, handled_at=timezone.now())
        except IntegrityError:
            logger.info("event %s %s was already handled; skipped", event.type, event.id)
            return False
        handler(event)
    return True
