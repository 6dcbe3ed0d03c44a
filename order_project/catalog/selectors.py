from collections.abc import Iterable

from django.db.models import QuerySet

from catalog.models import Product
from common.errors import NotFound


def product_list_active() -> QuerySet[Product]:
    return Product.objects.filter(is_active=True).order_by("id")


def product_get_active(*, product_id: int) -> Product:
    product = product_list_active().filter(id=product_id).first()
    if product is None:
        raise NotFound("No such product.")
    return product


def product_map_active(*, product_ids: Iterable[int]) -> dict[int, Product]:
    """The active products among ``product_ids``, by id, in one query; unknown and inactive ids are absent."""
    return {product.id: product for product in product_list_active().filter(id__in=list(product_ids))}
