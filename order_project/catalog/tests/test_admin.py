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
        {"sku": "CAP-001", "name": "Cap", "description": "", "price": "9.50", "currency": "USD", "is_active": "on"},
    )

    assert response.status_code == 302
    assert Product.objects.get(sku="CAP-001").name == "Cap"


def test_the_admin_refuses_a_lowercase_currency(admin_client) -> None:
    response = admin_client.post(
        reverse("admin:catalog_product_add"),
        {"sku": "CAP-001", "name": "Cap", "price": "9.50", "currency": "usd", "is_active": "on"},
    )

    assert response.status_code == 200  # the form comes back with the error
    assert not Product.objects.filter(sku="CAP-001").exists()
