import uuid

from django.db import models


class Order(models.Model):
    """An order and the persisted state of its saga (see :mod:`orders.saga` for the state machine)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"  # stock held, no charge asked for yet
        PAYMENT_PENDING = "payment_pending", "Payment pending"  # charge asked for, outcome not known yet
        CONFIRMED = "confirmed", "Confirmed"
        REFUND_PENDING = "refund_pending", "Refund pending"  # cancelled by the customer, refund not done yet
        CANCELLED = "cancelled", "Cancelled"

    class PaymentStatus(models.TextChoices):
        NONE = "", "No payment yet"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        REFUNDED = "refunded", "Refunded"

    class CancellationReason(models.TextChoices):
        NONE = "", "Not cancelled"
        PAYMENT_DECLINED = "payment_declined", "Payment declined"
        INVALID_METHOD = "invalid_payment_method", "Unknown payment method"
        CUSTOMER_CANCELLED = "customer_cancelled", "Cancelled by the customer"

    # Names this order to other services (the payment's idempotency key). Unlike the id, it is never
    # reused: SQLite hands a rolled-back order's id to the next order.
    reference = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Users live in the user service: a plain id, never a foreign key across services.
    user_id = models.BigIntegerField(db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    total_amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    payment_id = models.BigIntegerField(null=True, blank=True)
    payment_status = models.CharField(max_length=16, choices=PaymentStatus.choices, blank=True, default="")
    payment_failure_code = models.CharField(max_length=64, blank=True)
    # Kept so that the background can retry the charge with it; a payment token, never card data.
    payment_method = models.CharField(max_length=64, blank=True)
    cancellation_reason = models.CharField(max_length=32, choices=CancellationReason.choices, blank=True)
    # The saga's bookkeeping: charge (or refund) calls made, and when the background should look at this
    # order next. next_attempt_at doubles as a lease: whoever moves it forward with a conditional update
    # owns the next step, so the request and the sweeper never call the payment service at the same time.
    # NULL once the order is settled (confirmed or cancelled).
    payment_attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # The client's Idempotency-Key of the request that placed it: a retried request finds this order again
    # instead of placing a second one, even when the first request died before it could answer.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=["user_id", "-created_at"], name="orders_user_created_idx")]
        constraints = [
            models.CheckConstraint(condition=models.Q(total_amount__gte=0), name="orders_order_total_not_negative"),
            models.UniqueConstraint(
                fields=["user_id", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="orders_order_unique_user_idempotency_key",
            ),
            # Never confirmed without a charge.
            models.CheckConstraint(
                condition=~models.Q(status="confirmed") | models.Q(payment_status="succeeded"),
                name="orders_order_confirmed_only_when_paid",
            ),
        ]

    def __str__(self) -> str:
        return f"Order {self.pk} ({self.status})"


class OrderItem(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="items")
    # The catalog lives in this same service, so a foreign key is fine; PROTECT keeps history intact.
    product = models.ForeignKey("catalog.Product", on_delete=models.PROTECT, related_name="order_items")
    # Snapshots: what the customer bought, even if the product is renamed or repriced later.
    sku = models.CharField(max_length=32)
    name = models.CharField(max_length=200)
    quantity = models.PositiveSmallIntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)
    line_total = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(
                condition=models.Q(quantity__gte=1, quantity__lte=100), name="orders_item_quantity_1_to_100"
            ),
            models.UniqueConstraint(fields=["order", "product"], name="orders_item_unique_product_per_order"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.sku}"


class OrderHistoryEntry(models.Model):
    """One step in an order's life, appended by orders.saga in the same transaction as the change it
    records. Never updated or deleted: the admin shows it read-only and no code path edits it."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="history")
    event = models.CharField(max_length=32)  # what happened, e.g. placed, payment_unknown, refunded
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        verbose_name_plural = "order history entries"

    def __str__(self) -> str:
        return f"{self.event}: {self.from_status or '-'} -> {self.to_status}"


class IdempotencyKey(models.Model):
    """A client's Idempotency-Key for POST /api/v1/orders/ and the first response to it (common.idempotency
    implements the protocol; this is the order service's store)."""

    scope = models.CharField(max_length=64)  # who sent it: "user:<id>"
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)  # sha256 of method, path and body
    locked_at = models.DateTimeField(null=True, blank=True)  # set while the first request runs
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.BinaryField(default=b"", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="orders_idempotency_unique_scope_key")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key}"
