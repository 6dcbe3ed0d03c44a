from typing import Any

from django.core.management.base import BaseCommand

from catalog.services import product_load_demo_catalog


class Command(BaseCommand):
    help = "Create the demo products that are missing (by SKU). Safe to run on every start."

    def handle(self, *args: Any, **options: Any) -> None:
        created = product_load_demo_catalog()
        self.stdout.write(f"load_demo_catalog: created {created} product(s).")
