"""Stock reservations: all or nothing, released once, and never oversold by concurrent orders."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import IntegrityError, connection

from catalog.errors import OutOfStock
from catalog.models import Product, StockReservation
from catalog.services import product_load_demo_catalog, stock_release, stock_reserve
from catalog.tests.factories import ProductFactory


@pytest.mark.django_db
def test_reserving_takes_the_units_off_the_shelf() -> None:
    mug, tee = ProductFactory(stock=5), ProductFactory(stock=3)
    order = uuid.uuid4()

    stock_reserve(order_reference=order, quantities={mug.id: 2, tee.id: 3})

    mug.refresh_from_db()
    tee.refresh_from_db()
    assert (mug.stock, tee.stock) == (3, 0)
    assert sorted(StockReservation.objects.values_list("product_id", "quantity", "status")) == [
        (mug.id, 2, "held"),
        (tee.id, 3, "held"),
    ]


@pytest.mark.django_db
def test_a_reservation_is_all_or_nothing() -> None:
    mug, tee = ProductFactory(stock=5), ProductFactory(stock=1)

    with pytest.raises(OutOfStock) as refused:
        stock_reserve(order_reference=uuid.uuid4(), quantities={mug.id: 2, tee.id: 2})

    assert refused.value.details == {"product_ids": [tee.id]}
    mug.refresh_from_db()
    tee.refresh_from_db()
    assert (mug.stock, tee.stock) == (5, 1)
    assert not StockReservation.objects.exists()


@pytest.mark.django_db
def test_reserving_the_same_order_again_takes_nothing_more() -> None:
    mug = ProductFactory(stock=5)
    order = uuid.uuid4()

    stock_reserve(order_reference=order, quantities={mug.id: 2})
    stock_reserve(order_reference=order, quantities={mug.id: 2})

    mug.refresh_from_db()
    assert mug.stock == 3


@pytest.mark.django_db
def test_a_reservation_is_released_exactly_once() -> None:
    mug = ProductFactory(stock=5)
    order = uuid.uuid4()
    stock_reserve(order_reference=order, quantities={mug.id: 2})

    assert stock_release(order_reference=order) == 1
    assert stock_release(order_reference=order) == 0

    mug.refresh_from_db()
    assert mug.stock == 5
    reservation = StockReservation.objects.get()
    assert (reservation.status, reservation.released_at is not None) == ("released", True)


@pytest.mark.django_db
def test_the_database_refuses_negative_stock() -> None:
    mug = ProductFactory(stock=0)

    with pytest.raises(IntegrityError):
        Product.objects.filter(id=mug.id).update(stock=-1)


@pytest.mark.django_db
def test_demo_products_come_with_stock() -> None:
    product_load_demo_catalog()

    assert set(Product.objects.values_list("stock", flat=True)) == {1000}


@pytest.mark.django_db(transaction=True)
def test_concurrent_orders_never_oversell() -> None:
    # Twelve orders of one unit race for five units: exactly five get one, and the shelf ends empty.
    mug = ProductFactory(stock=5)

    def reserve(_: int) -> bool:
        try:
            stock_reserve(order_reference=uuid.uuid4(), quantities={mug.id: 1})
            return True
        except OutOfStock:
            return False
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(reserve, range(12)))

    mug.refresh_from_db()
    assert outcomes.count(True) == 5
    assert mug.stock == 0
    assert StockReservation.objects.filter(status="held").count() == 5
