from dataclasses import dataclass
from decimal import Decimal

from catalog.models import Product


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
            },
        )
        created_count += created
    return created_count
