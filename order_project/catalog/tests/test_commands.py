from io import StringIO

import pytest
from django.core.management import call_command

from catalog.models import Product
from catalog.tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def run_load_demo_catalog() -> str:
    out = StringIO()
    call_command("load_demo_catalog", stdout=out)
    return out.getvalue()


def test_load_demo_catalog_creates_the_five_demo_products() -> None:
    output = run_load_demo_catalog()

    assert "created 5 product(s)" in output
    assert set(Product.objects.values_list("sku", flat=True)) == {"MUG-001", "TEE-001", "BAG-001", "BTL-001", "NTB-001"}
    assert str(Product.objects.get(sku="TEE-001").price) == "19.99"


def test_load_demo_catalog_run_twice_creates_nothing_new() -> None:
    run_load_demo_catalog()

    output = run_load_demo_catalog()

    assert "created 0 product(s)" in output
    assert Product.objects.count() == 5


def test_load_demo_catalog_keeps_products_edited_since() -> None:
    # Given a demo product whose price an admin changed
    ProductFactory(sku="MUG-001", name="Ceramic mug", price="14.00")

    # When the launcher runs the command again
    output = run_load_demo_catalog()

    # Then only the missing products are created and the edit survives
    assert "created 4 product(s)" in output
    assert str(Product.objects.get(sku="MUG-001").price) == "14.00"
