import pytest
from django.urls import reverse

from orders.models import Order, OrderHistoryEntry
from orders.tests.factories import OrderItemFactory

pytestmark = pytest.mark.django_db


def test_the_order_changelist_renders(admin_client) -> None:
    OrderItemFactory()

    response = admin_client.get(reverse("admin:orders_order_changelist"))

    assert response.status_code == 200


@pytest.mark.parametrize("query", ["7", "not-a-number"])
def test_searching_orders_by_id_renders(admin_client, query) -> None:
    OrderItemFactory(order__user_id=7)

    response = admin_client.get(reverse("admin:orders_order_changelist"), {"q": query})

    assert response.status_code == 200


def test_the_order_change_page_renders_with_its_items(admin_client) -> None:
    item = OrderItemFactory()

    response = admin_client.get(reverse("admin:orders_order_change", args=[item.order.id]))

    assert response.status_code == 200
    assert item.sku.encode() in response.content


def test_amounts_status_and_payment_cannot_be_edited_in_the_admin(admin_client) -> None:
    # Given a confirmed order
    order = OrderItemFactory().order

    # When an admin posts a changed amount and status
    admin_client.post(
        reverse("admin:orders_order_change", args=[order.id]),
        {
            "status": "cancelled",
            "total_amount": "0.01",
            "user_id": "1",
            "items-TOTAL_FORMS": "0",
            "items-INITIAL_FORMS": "0",
        },
    )

    # Then the order is unchanged
    order.refresh_from_db()
    assert (order.status, order.user_id) == ("confirmed", 7)
    assert str(order.total_amount) == "10.00"


def test_orders_cannot_be_added_in_the_admin(admin_client) -> None:
    response = admin_client.get(reverse("admin:orders_order_add"))

    assert response.status_code == 403
    assert not Order.objects.exists()


def test_the_order_change_page_shows_its_history_read_only(admin_client) -> None:
    item = OrderItemFactory()
    entry = OrderHistoryEntry.objects.create(
        order=item.order, event="payment_unknown", from_status="payment_pending", to_status="payment_pending"
    )

    response = admin_client.get(reverse("admin:orders_order_change", args=[item.order.id]))

    assert response.status_code == 200
    assert b"payment_unknown" in response.content
    # No form fields for the history: it cannot be edited, added to or deleted here
    assert b"history-0-event" not in response.content
    assert b"history-TOTAL_FORMS" not in response.content or b'name="history-0-DELETE"' not in response.content
    entry.refresh_from_db()
    assert entry.event == "payment_unknown"
