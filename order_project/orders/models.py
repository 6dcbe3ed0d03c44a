import uuid

from django.db import models


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        CONFIRMED = "confirmed", "Confirmed"
        CANCELLED = "cancelled", "Cancelled"

    class PaymentStatus(models.TextChoices):
        NONE = "", "No payment yet"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=["user_id", "-created_at"], name="orders_user_created_idx")]
        constraints = [
            models.CheckConstraint(condition=models.Q(total_amount__gte=0), name="orders_order_total_not_negative"),
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
