from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from payments.models import Payment
from payments.tests.factories import PaymentFactory

pytestmark = pytest.mark.django_db

CHANGELIST_URL = reverse("admin:payments_payment_changelist")


def change_url(payment: Payment) -> str:
    return reverse("admin:payments_payment_change", args=[payment.id])


def test_changelist_renders(admin_client: Client) -> None:
    PaymentFactory()
    PaymentFactory(declined=True)

    response = admin_client.get(CHANGELIST_URL)

    assert response.status_code == 200
    assert response.context["cl"].result_count == 2


@pytest.mark.parametrize(
    "query", ["?status=failed", "?currency=USD", "?failure_code=card_declined", "?q=1001", "?q=not-a-number"]
)
def test_changelist_filters_and_search_render(admin_client: Client, query: str) -> None:
    PaymentFactory(order_id=1001)
    PaymentFactory(declined=True)

    response = admin_client.get(CHANGELIST_URL + query)

    assert response.status_code == 200


def test_search_finds_a_payment_by_order_id(admin_client: Client) -> None:
    wanted = PaymentFactory(order_id=123456)
    PaymentFactory(order_id=654321)

    response = admin_client.get(CHANGELIST_URL, {"q": "123456"})

    assert [payment.id for payment in response.context["cl"].result_list] == [wanted.id]


def test_change_page_renders_read_only(admin_client: Client) -> None:
    payment = PaymentFactory(idempotency_key="k")

    response = admin_client.get(change_url(payment))

    assert response.status_code == 200
    assert response.context["has_change_permission"] is False
    assert b'name="amount"' not in response.content


def test_posting_the_change_page_cannot_alter_the_amount(admin_client: Client) -> None:
    payment = PaymentFactory(amount=Decimal("19.99"))

    response = admin_client.post(
        change_url(payment),
        {"order_id": payment.order_id, "user_id": payment.user_id, "amount": "0.01", "currency": "USD"},
    )

    assert response.status_code == 403
    payment.refresh_from_db()
    assert payment.amount == Decimal("19.99")


def test_payments_cannot_be_added_or_deleted(admin_client: Client) -> None:
    payment = PaymentFactory()

    add = admin_client.get(reverse("admin:payments_payment_add"))
    delete = admin_client.post(reverse("admin:payments_payment_delete", args=[payment.id]), {"post": "yes"})
    bulk_delete = admin_client.post(
        CHANGELIST_URL, {"action": "delete_selected", "_selected_action": [payment.id], "post": "yes"}
    )

    assert add.status_code == 403
    assert delete.status_code == 403
    assert bulk_delete.status_code in (200, 302)
    assert Payment.objects.filter(id=payment.id).exists()
