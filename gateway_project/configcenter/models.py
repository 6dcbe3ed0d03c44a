"""Config versions (append-only) and the gateway's outbox. Fields only: the logic is in services.py."""

from django.db import models
from django.utils import timezone


class ConfigVersion(models.Model):
    """One saved configuration of one service and profile. Never changed or deleted: the current
    configuration is the highest version, and the older ones are its history."""

    service = models.CharField(max_length=50)
    profile = models.CharField(max_length=50, default="default")
    version = models.PositiveIntegerField()
    values = models.JSONField(default=dict, blank=True)
    author = models.CharField(max_length=150)
    comment = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("service", "profile", "-version")
        constraints = (
            models.UniqueConstraint(fields=("service", "profile", "version"), name="configcenter_one_version"),
        )

    def __str__(self) -> str:
        return f"{self.service}/{self.profile} v{self.version}"

    @property
    def etag(self) -> str:
        return f'"{self.service}.{self.profile}.v{self.version}"'


class OutboxEvent(models.Model):
    """``config.changed`` events, written in the transaction that saves a version, until the relay has
    sent them (the same fields as every service's ``messaging.OutboxEvent``; see common.events)."""

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
            models.Index(
                fields=("next_attempt_at", "occurred_at"),
                condition=models.Q(sent_at__isnull=True),
                name="configcenter_outbox_due",
            ),
        )

    def __str__(self) -> str:
        return f"{self.type} {self.id}"
