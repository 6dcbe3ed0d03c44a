from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from orders.tests.factories import OrderFactory, OrderItemFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("quantity", [0, 101])
def test_the_database_refuses_a_quantity_outside_1_to_100(quantity) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        OrderItemFactory(quantity=quantity)


def test_the_database_refuses_the_same_product_twice_in_an_order() -> None:
    item = OrderItemFactory()

    with pytest.raises(IntegrityError), transaction.atomic():
        OrderItemFactory(order=item.order, product=item.product)


def test_the_database_refuses_a_negative_total() -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        OrderFactory(total_amount=Decimal("-1.00"))


def test_new_orders_start_pending_without_payment() -> None:
    order = OrderFactory(status="pending", payment_id=None, payment_status="")

    order.refresh_from_db()
    assert (order.status, order.payment_id, order.payment_status, order.payment_failure_code) == (
        "pending",
        None,
        "",
        "",
    )
