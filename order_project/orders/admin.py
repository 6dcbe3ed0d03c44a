from django.contrib import admin
from django.http import HttpRequest

from orders.models import Order, OrderHistoryEntry, OrderItem


class OrderItemInline(admin.TabularInline):
    model = OrderItem
    fields = ("product", "sku", "name", "quantity", "unit_price", "line_total")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False


class OrderHistoryInline(admin.TabularInline):
    """The order's append-only history: shown, never added to, edited or deleted here."""

    model = OrderHistoryEntry
    fields = ("created_at", "event", "from_status", "to_status", "details")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Order | None = None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "user_id", "status", "total_amount", "currency", "payment_status", "created_at")
    list_filter = ("status", "payment_status", "currency")
    search_fields = ("=id", "=user_id", "=payment_id", "=reference")
    ordering = ("-created_at", "-id")
    date_hierarchy = "created_at"
    # An order mirrors what was charged at the payment service: editing amounts, status, the customer or
    # the payment here would make the two disagree. Changes go through services, not the admin.
    readonly_fields = (
        "reference",
        "user_id",
        "status",
        "total_amount",
        "currency",
        "payment_id",
        "payment_status",
        "payment_failure_code",
        "payment_method",
        "cancellation_reason",
        "payment_attempts",
        "next_attempt_at",
        "idempotency_key",
        "created_at",
        "updated_at",
    )
    inlines = (OrderItemInline, OrderHistoryInline)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
