from typing import Any

from django.core.management.base import BaseCommand

from common.idempotency import purge_expired
from payments.models import IdempotencyKey


class Command(BaseCommand):
    help = "Delete the charge endpoint's Idempotency-Keys older than IDEMPOTENCY_KEY_TTL (run it daily)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"purge_idempotency_keys: deleted {purge_expired(IdempotencyKey)} key(s).")
