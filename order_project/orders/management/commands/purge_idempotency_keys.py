from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from common.idempotency import key_ttl, purge_expired
from orders.models import IdempotencyKey, Order


class Command(BaseCommand):
    help = "Delete Idempotency-Keys of POST /api/v1/orders/ older than IDEMPOTENCY_KEY_TTL (run it daily)."

    def handle(self, *args: Any, **options: Any) -> None:
        deleted = purge_expired(IdempotencyKey)
        # The orders placed with them forget them too, so the key is free for a new order.
        forgotten = Order.objects.filter(
            idempotency_key__isnull=False, created_at__lte=timezone.now() - key_ttl()
        ).update(idempotency_key=None)
        self.stdout.write(f"purge_idempotency_keys: deleted {deleted} key(s), released {forgotten} order key(s).")
