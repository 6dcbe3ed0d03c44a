from decimal import Decimal

import pytest

from catalog.tests.factories import ProductFactory
from common.testing import assertion_headers

pytestmark = pytest.mark.django_db

PRODUCTS = "/api/v1/products/"


def test_the_catalog_lists_active_products_by_id_as_a_plain_list(client) -> None:
    # Given two active products and a withdrawn one
    mug = ProductFactory(sku="MUG-001", name="Ceramic mug", price=Decimal("12.50"))
    ProductFactory(is_active=False)
    tee = ProductFactory(sku="TEE-001", name="Cotton T-shirt", price=Decimal("19.99"))

    # When an anonymous visitor browses through the gateway
    response = client.get(PRODUCTS, headers=assertion_headers())

    # Then they see the active ones, in id order, not paginated
    assert response.status_code == 200
    assert response.json() == [
        {"id": mug.id, "sku": "MUG-001", "name": "Ceramic mug", "price": "12.50", "currency": "USD"},
        {"id": tee.id, "sku": "TEE-001", "name": "Cotton T-shirt", "price": "19.99", "currency": "USD"},
    ]


def test_a_product_can_be_read_with_its_description(client) -> None:
    product = ProductFactory(
        sku="NTB-001", name="Dot-grid notebook", description="A5, 120 pages.", price=Decimal("8.75")
    )

    response = client.get(f"{PRODUCTS}{product.id}/", headers=assertion_headers(user_id=7))

    assert response.status_code == 200
    assert response.json() == {
        "id": product.id,
        "sku": "NTB-001",
        "name": "Dot-grid notebook",
        "description": "A5, 120 pages.",
        "price": "8.75",
        "currency": "USD",
    }


@pytest.mark.parametrize("active", [False, None])
def test_an_inactive_or_unknown_product_is_not_found(client, active) -> None:
    product_id = ProductFactory(is_active=False).id if active is False else 424242

    response = client.get(f"{PRODUCTS}{product_id}/", headers=assertion_headers())

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", [PRODUCTS, f"{PRODUCTS}1/"])
def test_the_catalog_is_only_served_through_the_gateway(client, path) -> None:
    ProductFactory(id=1)

    response = client.get(path)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "gateway_required"
