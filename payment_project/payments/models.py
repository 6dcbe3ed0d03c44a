from django.db import models
from django.db.models import Q


class Payment(models.Model):
    """One charge attempt made for an order. A declined charge is a payment too, with status ``failed``."""

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        REFUNDED = "refunded", "Refunded"  # was succeeded; the whole amount went back

    class FailureCode(models.TextChoices):
        CARD_DECLINED = "card_declined", "Card declined"
        INSUFFICIENT_FUNDS = "insufficient_funds", "Insufficient funds"
        AMOUNT_TOO_LARGE = "amount_too_large", "Amount over the charge limit"

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
    refunded_at = models.DateTimeField(null=True, blank=True)

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


class IdempotencyKey(models.Model):
    """A calling service's Idempotency-Key for the charge endpoint and the first response to it
    (common.idempotency implements the protocol; this is the payment service's store)."""

    scope = models.CharField(max_length=64)  # who sent it: "service:<caller>"
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)  # sha256 of method, path and body
    locked_at = models.DateTimeField(null=True, blank=True)  # set while the first request runs
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    response_body = models.BinaryField(default=b"", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="payments_idempotency_unique_scope_key")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key}"
