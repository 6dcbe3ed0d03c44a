from decimal import Decimal

import pytest
from django.urls import reverse

from catalog.models import Product
from catalog.tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def test_the_product_changelist_renders(admin_client) -> None:
    ProductFactory()

    response = admin_client.get(reverse("admin:catalog_product_changelist"), {"q": "SKU"})

    assert response.status_code == 200


def test_the_product_change_page_renders(admin_client) -> None:
    product = ProductFactory()

    response = admin_client.get(reverse("admin:catalog_product_change", args=[product.id]))

    assert response.status_code == 200


def test_the_product_add_page_renders(admin_client) -> None:
    response = admin_client.get(reverse("admin:catalog_product_add"))

    assert response.status_code == 200


def test_an_admin_can_add_a_product(admin_client) -> None:
    response = admin_client.post(
        reverse("admin:catalog_product_add"),
        {
            "sku": "CAP-001",
            "name": "Cap",
            "description": "",
            "price": "9.50",
            "currency": "USD",
            "stock": "25",
            "is_active": "on",
        },
    )

    assert response.status_code == 302
    assert Product.objects.get(sku="CAP-001").name == "Cap"
    assert Product.objects.get(sku="CAP-001").stock == 25


def test_the_admin_refuses_a_lowercase_currency(admin_client) -> None:
    response = admin_client.post(
        reverse("admin:catalog_product_add"),
        {"sku": "CAP-001", "name": "Cap", "price": "9.50", "currency": "usd", "is_active": "on"},
    )

    assert response.status_code == 200  # the form comes back with the error
    assert not Product.objects.filter(sku="CAP-001").exists()


def test_editing_a_product_in_the_admin_never_writes_back_a_stale_stock(admin_client) -> None:
    product = ProductFactory(stock=10, price="5.00")
    form_page = admin_client.get(reverse("admin:catalog_product_change", args=[product.id]))
    assert form_page.status_code == 200
    # An order takes three units while the form is open
    Product.objects.filter(id=product.id).update(stock=7)

    response = admin_client.post(
        reverse("admin:catalog_product_change", args=[product.id]),
        {
            "sku": product.sku,
            "name": product.name,
            "description": "",
            "price": "6.00",
            "currency": "USD",
            "is_active": "on",
            "stock": "10",
        },
    )

    assert response.status_code == 302
    product.refresh_from_db()
    assert (product.price, product.stock) == (Decimal("6.00"), 7)
