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


# Version 2: a price is {amount, currency}; the list pages with a cursor


V2_PRODUCTS = "/api/v2/products/"


def test_v2_lists_products_with_money_objects_one_cursor_page_at_a_time(client) -> None:
    # Given five active products and a withdrawn one
    products = [ProductFactory(price=Decimal(f"{index}.50"), currency="EUR") for index in range(1, 6)]
    ProductFactory(is_active=False)

    # When a client reads pages of two, following the links
    first = client.get(f"{V2_PRODUCTS}?page_size=2", headers=assertion_headers()).json()
    second = client.get(first["next"], headers=assertion_headers()).json()
    third = client.get(second["next"], headers=assertion_headers()).json()

    # Then each product comes once, in id order, priced with its currency, and the links stay relative
    assert first["results"][0] == {
        "id": products[0].id,
        "sku": products[0].sku,
        "name": products[0].name,
        "price": {"amount": "1.50", "currency": "EUR"},
    }
    seen = [item["id"] for page in (first, second, third) for item in page["results"]]
    assert seen == [product.id for product in products]
    assert first["next"].startswith(f"{V2_PRODUCTS}?")
    assert "cursor=" in first["next"]
    assert first["previous"] is None
    assert third["next"] is None
    assert second["previous"].startswith(V2_PRODUCTS)


def test_v2_page_size_is_capped(client) -> None:
    ProductFactory.create_batch(3)

    response = client.get(f"{V2_PRODUCTS}?page_size=100000", headers=assertion_headers())

    assert response.status_code == 200
    assert len(response.json()["results"]) == 3


def test_v2_reads_one_product_with_its_description(client) -> None:
    product = ProductFactory(description="A5, 120 pages.", price=Decimal("8.75"))

    response = client.get(f"{V2_PRODUCTS}{product.id}/", headers=assertion_headers(user_id=7))

    assert response.status_code == 200
    assert response.json() == {
        "id": product.id,
        "sku": product.sku,
        "name": product.name,
        "description": "A5, 120 pages.",
        "price": {"amount": "8.75", "currency": "USD"},
    }


@pytest.mark.parametrize("path", ["", "424242/", "?cursor=not-a-cursor"])
def test_v2_errors_use_the_envelope(client, path) -> None:
    ProductFactory(is_active=False)

    response = client.get(f"{V2_PRODUCTS}{path}", headers=assertion_headers())
    direct = client.get(f"{V2_PRODUCTS}{path}")

    if path == "":
        assert response.status_code == 200
    else:
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert direct.status_code == 401


def test_v2_is_in_the_schema(client) -> None:
    response = client.get("/api/schema/orders/?format=json")

    paths = response.json()["paths"]
    assert "/api/v2/products/" in paths
    assert "/api/v2/products/{product_id}/" in paths
