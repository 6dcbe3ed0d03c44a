from decimal import Decimal

import pytest

from catalog.tests.factories import ProductFactory
from common.errors import NotFound
from common.internal_auth import Principal
from orders.models import Order
from orders.selectors import order_get, order_list
from orders.services import order_place
from orders.tests.conftest import USER_ID
from orders.tests.factories import OrderFactory

pytestmark = pytest.mark.django_db

CUSTOMER = Principal(id=USER_ID, is_staff=False, caller="gateway")


def test_order_place_snapshots_the_products_as_they_were_sold(user_exists, payment_service) -> None:
    # Given a product
    product = ProductFactory(sku="BTL-001", name="Steel water bottle", price=Decimal("24.90"))
    payment_service("succeeded")

    # When it is ordered and then renamed and repriced in the catalog
    order = order_place(principal=CUSTOMER, items=[{"product_id": product.id, "quantity": 3}], payment_method="pm")
    product.name, product.price = "Bottle v2", Decimal("99.00")
    product.save()

    # Then the order keeps what was sold, at the price it was sold for
    item = order.items.get()
    assert (item.sku, item.name, item.unit_price, item.line_total) == (
        "BTL-001",
        "Steel water bottle",
        Decimal("24.90"),
        Decimal("74.70"),
    )
    assert Order.objects.get().total_amount == Decimal("74.70")


def test_order_place_takes_the_currency_of_the_products(user_exists, payment_service) -> None:
    product = ProductFactory(currency="EUR", price=Decimal("5.00"))
    payment_service("succeeded")

    order = order_place(principal=CUSTOMER, items=[{"product_id": product.id, "quantity": 1}], payment_method="pm")

    assert order.currency == "EUR"


def test_order_get_hides_other_users_orders() -> None:
    order = OrderFactory(user_id=USER_ID + 1)

    with pytest.raises(NotFound):
        order_get(user_id=USER_ID, order_id=order.id)


def test_order_list_returns_only_the_users_orders() -> None:
    mine = OrderFactory(user_id=USER_ID)
    OrderFactory(user_id=USER_ID + 1)

    assert list(order_list(user_id=USER_ID)) == [mine]
