import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from catalog.errors import OutOfStock
from catalog.models import Product, StockReservation

DEMO_STOCK = 1000


@dataclass(frozen=True)
class ProductSpec:
    sku: str
    name: str
    description: str
    price: Decimal
    currency: str = "USD"


DEMO_PRODUCTS = (
    ProductSpec("MUG-001", "Ceramic mug", "A 350 ml stoneware mug, dishwasher safe.", Decimal("12.50")),
    ProductSpec("TEE-001", "Cotton T-shirt", "Organic cotton crew-neck T-shirt.", Decimal("19.99")),
    ProductSpec("BAG-001", "Canvas tote bag", "Heavy canvas tote with long handles.", Decimal("15.00")),
    ProductSpec("BTL-001", "Steel water bottle", "Insulated 750 ml stainless steel bottle.", Decimal("24.90")),
    ProductSpec("NTB-001", "Dot-grid notebook", "A5 notebook, 120 pages of dot-grid paper.", Decimal("8.75")),
)


def product_load_demo_catalog() -> int:
    """Create the demo products that do not exist yet (matched by SKU); return how many were created.
    Existing products are left as they are, so edits made in the admin survive the launcher's next run."""
    created_count = 0
    for spec in DEMO_PRODUCTS:
        _, created = Product.objects.get_or_create(
            sku=spec.sku,
            defaults={
                "name": spec.name,
                "description": spec.description,
                "price": spec.price,
                "currency": spec.currency,
                "stock": DEMO_STOCK,
            },
        )
        created_count += created
    return created_count


def stock_reserve(*, order_reference: uuid.UUID, quantities: Mapping[int, int]) -> None:
    """Hold ``quantities`` (product id -> units) for the order, all or nothing: if any product lacks the
    units, nothing is held and :class:`OutOfStock` names the short ones. Reserving an order that already
    holds its units again changes nothing (a redelivered saga step)."""
    with transaction.atomic():
        if StockReservation.objects.filter(order_reference=order_reference).exists():
            return
        short = []
        for product_id, quantity in sorted(quantities.items()):  # one lock order, so two orders never deadlock
            # Conditional update: only takes the units if they are there, atomically, without a lost update.
            taken = Product.objects.filter(id=product_id, stock__gte=quantity).update(stock=F("stock") - quantity)
            if not taken:
                short.append(product_id)
        if short:
            raise OutOfStock(details={"product_ids": short})
        try:
            with transaction.atomic():
                StockReservation.objects.bulk_create(
                    StockReservation(order_reference=order_reference, product_id=product_id, quantity=quantity)
                    for product_id, quantity in quantities.items()
                )
        except IntegrityError:
            # A concurrent run of the same step reserved first: undo our takes, keep theirs.
            transaction.set_rollback(True)


def stock_release(*, order_reference: uuid.UUID) -> int:
    """Give back every unit the order still holds; return how many reservations were released now. Each
    reservation is released at most once, however often (or concurrently) this runs."""
    released = 0
    with transaction.atomic():
        for reservation in StockReservation.objects.filter(
            order_reference=order_reference, status=StockReservation.Status.HELD
        ):
            # Conditional on still being held: of two racing releases, exactly one wins each line.
            won = StockReservation.objects.filter(id=reservation.id, status=StockReservation.Status.HELD).update(
                status=StockReservation.Status.RELEASED, released_at=timezone.now()
            )
            if won:
                Product.objects.filter(id=reservation.product_id).update(stock=F("stock") + reservation.quantity)
                released += 1
    return released
