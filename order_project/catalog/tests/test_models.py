from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from catalog.tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("price", [Decimal("0.00"), Decimal("-1.00")])
def test_the_database_refuses_a_price_that_is_not_positive(price) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        ProductFactory(price=price)


def test_skus_are_unique() -> None:
    ProductFactory(sku="MUG-001")

    with pytest.raises(IntegrityError), transaction.atomic():
        ProductFactory(sku="MUG-001")


def test_a_new_product_is_active_and_priced_in_dollars_by_default() -> None:
    product = ProductFactory.build()

    assert (product.is_active, product.currency) == (True, "USD")
