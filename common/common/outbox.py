"""The outbox relay: sends the events ``publish_event`` recorded, then marks them sent.

Why a management command (``manage.py relay_outbox``, one process per publishing service, started by the
launcher) rather than a Celery beat task: a beat task needs two more processes per service (beat and a
worker for its queue), fires at most about once a second, and a run that overlaps the previous one needs a
lock of its own. A small loop holds one broker connection with publisher confirms open, polls an indexed
"pending" query every ``OUTBOX_POLL_INTERVAL`` seconds (0.2 by default: an event leaves within a fraction of
a second of its commit, which keeps the journey to the emails fast), and stops cleanly on SIGTERM.

Delivery is at least once. A row is claimed before it is sent: on PostgreSQL ``SELECT ... FOR UPDATE SKIP
LOCKED`` lets two relays take disjoint batches; on both databases the claim is a conditional update of
``next_attempt_at`` to a lease in the future (the healthchecks ``Flip`` idiom), so a second relay that read
the same row before the first wrote it updates nothing and skips it (SQLite serialises writers, so that
conditional update is where two relays meet). The broker call happens after the claim has committed, so no
database lock is held while waiting for the broker. A relay killed between the broker's confirm and the
"sent" mark leaves the row claimed; when its lease runs out the row is sent again — a duplicate message the
consumers' inbox turns into no second effect.

A failed send (broker down, refused, unconfirmed) counts an attempt and schedules the row again after an
exponential backoff (``OUTBOX_RETRY_BACKOFF`` * 2^(attempts-1), at most ``OUTBOX_RETRY_BACKOFF_MAX``); rows
are never given up on: the outbox is the only copy of the event.

Confirms: with RabbitMQ (``amqp://``) every service's transport options set ``confirm_publish``, so py-amqp
waits for the broker's ack and raises on a nack. kombu's filesystem transport (embedded mode) has no
confirms: its publish returns once the message file is written, which is the same guarantee on one machine.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, router, transaction
from django.db.models import Min
from django.utils import timezone
from opentelemetry.trace import SpanKind

from common.events import event_from_outbox, outbox_model, send_event
from common.tracing import continued_from, untraced

logger = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 0.2
DEFAULT_BATCH_SIZE = 100
DEFAULT_LEASE_SECONDS = 30.0
DEFAULT_RETRY_BACKOFF = 1.0
DEFAULT_RETRY_BACKOFF_MAX = 60.0


@dataclass(frozen=True)
class RelayResult:
    sent: int
    failed: int


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    oldest_pending_seconds: float | None  # None when nothing is pending

    def as_dict(self) -> dict[str, Any]:
        oldest = None if self.oldest_pending_seconds is None else round(self.oldest_pending_seconds, 3)
        return {"pending": self.pending, "oldest_pending_seconds": oldest}


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


def retry_delay(attempts: int) -> float:
    """Seconds to wait before the next try of a row that failed ``attempts`` times."""
    base = _setting("OUTBOX_RETRY_BACKOFF", DEFAULT_RETRY_BACKOFF)
    return min(base * 2 ** max(attempts - 1, 0), _setting("OUTBOX_RETRY_BACKOFF_MAX", DEFAULT_RETRY_BACKOFF_MAX))


def outbox_claim(*, limit: int, now: datetime | None = None) -> list[Any]:
    """Take up to ``limit`` rows that are due, oldest first, leasing them to this relay for a while."""
    model = outbox_model()
    now = now or timezone.now()
    lease_until = now + timedelta(seconds=_setting("OUTBOX_LEASE_SECONDS", DEFAULT_LEASE_SECONDS))
    with transaction.atomic(using=router.db_for_write(model)):
        due = model.objects.filter(sent_at__isnull=True, next_attempt_at__lte=now).order_by("occurred_at", "id")
        # of=("self",) is not needed (no joins); skip_locked is ignored where unsupported (SQLite).
        candidates = list(due.select_for_update(skip_locked=True)[:limit])
        claimed = []
        for row in candidates:
            # The conditional update is the claim proper: a relay that read the row before we leased it
            # matches nothing here.
            taken = model.objects.filter(pk=row.pk, sent_at__isnull=True, next_attempt_at=row.next_attempt_at).update(
                next_attempt_at=lease_until
            )
            if taken:
                claimed.append(row)
    return claimed


def relay_once(*, limit: int | None = None) -> RelayResult:
    """Send every due row (up to ``limit``) once. After the first failure the rest of the batch is put back
    for later: the broker is likely down, and each further try would only wait for the same timeout."""
    model = outbox_model()
    limit = limit or int(_setting("OUTBOX_BATCH_SIZE", DEFAULT_BATCH_SIZE))
    # The poll runs several times a second: tracing every empty one would bury the traces that matter.
    with untraced():
        rows = outbox_claim(limit=limit)
    sent = failed = 0
    for index, row in enumerate(rows):
        try:
            # Continue the trace of the request that recorded the event: Celery's publish span and the
            # traceparent it writes into the message headers then belong to that trace.
            with continued_from(row.trace_context or {}, f"outbox relay {row.type}", kind=SpanKind.PRODUCER):
                send_event(event_from_outbox(row))
        except Exception as exc:  # kombu/py-amqp raise transport-specific errors; any means "not confirmed"
            failed += 1
            attempts = row.attempts + 1
            retry_at = timezone.now() + timedelta(seconds=retry_delay(attempts))
            logger.warning("outbox: sending %s %s failed (attempt %s): %r", row.type, row.pk, attempts, exc)
            model.objects.filter(pk=row.pk).update(
                attempts=attempts, next_attempt_at=retry_at, last_error=repr(exc)[:2000]
            )
            later = [other.pk for other in rows[index + 1 :]]
            if later:
                model.objects.filter(pk__in=later, sent_at__isnull=True).update(next_attempt_at=retry_at)
            break
        with untraced():  # outside any trace here: it would show as a trace of one query
            model.objects.filter(pk=row.pk).update(sent_at=timezone.now(), attempts=row.attempts + 1, last_error="")
        sent += 1
        logger.info("outbox: sent %s %s", row.type, row.pk)
    return RelayResult(sent=sent, failed=failed)


def relay_pending() -> int:
    """Send everything that is due now; the number sent. For tests and one-off runs."""
    total = 0
    while True:
        result = relay_once()
        total += result.sent
        if result.failed or not result.sent:
            return total


def outbox_prune(*, older_than: timedelta) -> int:
    """Delete rows sent longer ago than ``older_than``: they are only a record by then."""
    deleted, _ = outbox_model().objects.filter(sent_at__lt=timezone.now() - older_than).delete()
    return deleted


def outbox_stats() -> OutboxStats:
    model = outbox_model()
    pending = model.objects.filter(sent_at__isnull=True)
    oldest = pending.aggregate(oldest=Min("occurred_at"))["oldest"]
    age = None if oldest is None else max((timezone.now() - oldest).total_seconds(), 0.0)
    return OutboxStats(pending=pending.count(), oldest_pending_seconds=age)


def run_relay(*, stop: threading.Event, poll_interval: float | None = None) -> None:
    """Relay until ``stop`` is set: right away while rows keep coming, every ``poll_interval`` when idle."""
    interval = poll_interval if poll_interval is not None else _setting("OUTBOX_POLL_INTERVAL", DEFAULT_POLL_INTERVAL)
    retention = timedelta(days=_setting("OUTBOX_RETENTION_DAYS", 7))
    next_prune = 0.0
    while not stop.is_set():
        try:
            result = relay_once()
            if time.monotonic() >= next_prune:
                outbox_prune(older_than=retention)
                next_prune = time.monotonic() + 3600
        except Exception:  # the database went away: log, drop the connection, try again after a pause
            logger.exception("outbox relay: a round failed")
            connection.close()
            result = RelayResult(sent=0, failed=1)
        if not result.sent or result.failed:
            close_old_connections()
            stop.wait(interval if not result.failed else max(interval, 1.0))
