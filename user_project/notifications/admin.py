from django.contrib import admin
from django.http import HttpRequest

from notifications.models import SentEmail


@admin.register(SentEmail)
class SentEmailAdmin(admin.ModelAdmin):
    """A record of what was sent: read-only, since editing it would misstate history."""

    list_display = ("sent_at", "kind", "to_email", "subject", "user_id", "event_id")
    list_filter = ("kind", "sent_at")
    search_fields = ("to_email", "subject")
    ordering = ("-sent_at",)
    date_hierarchy = "sent_at"
    fields = ("event_id", "kind", "user_id", "to_email", "subject", "body", "sent_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: SentEmail | None = None) -> bool:
        return False
