"""Admin pages for each service's outbox and inbox models (registered by the service's ``messaging`` app).

Read-only: rows are written by ``publish_event``, the relay and the worker. The outbox list opens with the
figures the health check reports — pending events, the oldest one's age, dead letters per consumer queue —
so a person looking at a stuck event sees the whole picture in one place.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse

from common.dead_letters import dead_letter_count
from common.outbox import outbox_stats


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class OutboxEventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "type", "aggregate_id", "sent_at", "attempts", "next_attempt_at", "last_error")
    list_filter = (("sent_at", admin.EmptyFieldListFilter), "type")
    search_fields = ("id", "aggregate_id", "request_id")
    date_hierarchy = "occurred_at"
    ordering = ("-occurred_at",)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        stats = outbox_stats()
        oldest = "—" if stats.oldest_pending_seconds is None else f"{stats.oldest_pending_seconds:.1f} s"
        messages.info(request, f"Pending: {stats.pending}; oldest pending: {oldest}.")
        queues = [queue.name for queue in getattr(settings, "CELERY_TASK_QUEUES", None) or ()]
        for queue in queues:
            try:
                count: object = dead_letter_count(queue)
            except Exception:  # broker unreachable: the page still shows the outbox
                count = "unknown (broker unreachable)"
            messages.info(
                request, f"Dead letters in {queue}: {count} (manage.py dead_letters list | redrive [--id ID])."
            )
        return super().changelist_view(request, extra_context)


class InboxEventAdmin(ReadOnlyAdmin):
    list_display = ("handled_at", "type", "source", "event_id")
    list_filter = ("type", "source")
    search_fields = ("event_id",)
    ordering = ("-handled_at",)
