from django.db import models
from django.utils import timezone


class SentEmail(models.Model):
    """An email sent because of an event. The (event, kind) pair is unique: that is what makes a redelivered
    event send nothing twice."""

    class Kind(models.TextChoices):
        WELCOME = "welcome", "Welcome"
        ORDER_CONFIRMATION = "order_confirmation", "Order confirmation"
        ORDER_CANCELLATION = "order_cancellation", "Order cancellation"

    event_id = models.UUIDField()
    kind = models.CharField(max_length=32, choices=Kind.choices)
    user_id = models.PositiveBigIntegerField(db_index=True)
    to_email = models.EmailField(max_length=254)
    subject = models.CharField(max_length=255)
    body = models.TextField()
    sent_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-sent_at", "-id")
        constraints = (
            models.UniqueConstraint(fields=("event_id", "kind"), name="notifications_sentemail_event_kind_unique"),
        )

    def __str__(self) -> str:
        return f"{self.get_kind_display()} to {self.to_email}"
