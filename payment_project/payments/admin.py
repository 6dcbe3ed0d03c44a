from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from payments.models import Payment


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    """Read-only: a payment records what happened at the card network; editing it would make the record
    lie. Corrections (refunds) will be new actions, not edits."""

    list_display = ("id", "order_id", "user_id", "status", "amount", "currency", "failure_code", "created_at")
    list_filter = ("status", "currency", "failure_code")
    search_fields = ("=id", "=order_id", "=user_id")
    ordering = ("-created_at", "-id")
    date_hierarchy = "created_at"
    fields = (
        "id",
        "order_id",
        "user_id",
        "status",
        "amount",
        "currency",
        "payment_method",
        "failure_code",
        "caller",
        "idempotency_key",
        "created_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
