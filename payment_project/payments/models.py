from django.db import models
from django.db.models import Q


class Payment(models.Model):
    """One charge attempt made for an order. A declined charge is a payment too, with status ``failed``."""

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        # "refunded" (and perhaps "partially_refunded") come later; max_length leaves room for them.

    class FailureCode(models.TextChoices):
        CARD_DECLINED = "card_declined", "Card declined"
        INSUFFICIENT_FUNDS = "insufficient_funds", "Insufficient funds"

    # Plain ids, not foreign keys: orders and users live in other services.
    order_id = models.BigIntegerField(db_index=True)
    user_id = models.BigIntegerField(db_index=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=Status.choices)
    payment_method = models.CharField(max_length=64)
    failure_code = models.CharField(max_length=32, choices=FailureCode.choices, blank=True, default="")
    # The Idempotency-Key the calling service sent, scoped to that caller: two services may pick the same key.
    # NULL, not "", when absent: the unique constraint below then ignores payments made without a key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    caller = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="payments_payment_amount_positive"),
            models.CheckConstraint(
                condition=(Q(status="failed") & ~Q(failure_code="")) | (~Q(status="failed") & Q(failure_code="")),
                name="payments_payment_failure_code_iff_failed",
            ),
            # Also what settles two concurrent requests with the same key: the second insert fails.
            models.UniqueConstraint(
                fields=("caller", "idempotency_key"),
                condition=Q(idempotency_key__isnull=False),
                name="payments_payment_unique_caller_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"Payment {self.pk} for order {self.order_id} ({self.status})"
