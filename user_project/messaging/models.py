"""This service's outbox and inbox tables. Fields only: the logic is ``common.events``, ``common.outbox`` and
``common.inbox``, which find these models through the OUTBOX_MODEL and INBOX_MODEL settings. Every service
declares the same two models (``common`` holds no models)."""

from django.db import models
from django.utils import timezone


class OutboxEvent(models.Model):
    """An event written in the transaction of the change it announces, until the relay has sent it."""

    id = models.UUIDField(primary_key=True)
    type = models.CharField(max_length=100)
    version = models.PositiveIntegerField(default=1)
    source = models.CharField(max_length=50)
    aggregate_id = models.CharField(max_length=64, blank=True)
    data = models.JSONField()
    occurred_at = models.DateTimeField()
    request_id = models.CharField(max_length=128, blank=True)
    trace_context = models.JSONField(default=dict, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)

    class Meta:
        indexes = (
            # The relay's query: pending rows that are due, oldest first. Sent rows are most of the table.
            models.Index(
                fields=("next_attempt_at", "occurred_at"),
                condition=models.Q(sent_at__isnull=True),
                name="messaging_outbox_due",
            ),
        )

    def __str__(self) -> str:
        return f"{self.type} {self.id}"


class InboxEvent(models.Model):
    """An event this service has handled; written in the same transaction as the handler's effect."""

    event_id = models.CharField(primary_key=True, max_length=64)
    type = models.CharField(max_length=100)
    source = models.CharField(max_length=50, blank=True)
    handled_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"
