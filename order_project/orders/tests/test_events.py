from decimal import Decimal

import pytest

from catalog.errors import OutOfStock
from catalog.tests.factories import ProductFactory
from common.internal_auth import Principal
from orders.models import Order
from orders.services import order_place
from orders.tests.conftest import USER_ID, user_url

pytestmark = pytest.mark.django_db


def test_a_confirmed_order_publishes_created_then_confirmed(
    user_exists, payment_service, event_broker, django_capture_on_commit_callbacks
) -> None:
    # Given a product, a payment that succeeds, and a queue bound to every event type
    product = ProductFactory(sku="MUG-001", name="Ceramic mug", price=Decimal("12.50"))
    payment_service("succeeded")
    published_events = event_broker.subscribe()

    # When the order is placed and its transaction commits
    with django_capture_on_commit_callbacks(execute=True):
        order = order_place(
            principal=Principal(id=USER_ID, is_staff=False, caller="gateway"),
            items=[{"product_id": product.id, "quantity": 2}],
            payment_method="pm_card_visa",
        )

    # Then both events reached the events exchange, in order, as "events.handle" task messages
    messages = published_events()
    assert [m.routing_key for m in messages] == ["order.created", "order.confirmed"]
    assert {m.task for m in messages} == {"events.handle"}
    created, confirmed = (m.event for m in messages)
    assert created["source"] == "orders"
    assert created["data"] == {
        "order_id": order.id,
        "user_id": USER_ID,
        "total_amount": "25.00",
        "currency": "USD",
        "items": [
            {
                "product_id": product.id,
                "sku": "MUG-001",
                "name": "Ceramic mug",
                "quantity": 2,
                "unit_price": "12.50",
                "line_total": "25.00",
            }
        ],
    }
    assert confirmed["type"] == "order.confirmed"
    assert confirmed["data"] == {**created["data"], "status": "confirmed"}


def test_a_declined_order_publishes_created_then_cancelled_with_the_reason(
    user_exists, payment_service, event_broker, django_capture_on_commit_callbacks
) -> None:
    # Given a payment that is declined, and a queue bound to every event type
    product = ProductFactory(price=Decimal("8.75"))
    payment_service("failed", failure_code="card_declined")
    published_events = event_broker.subscribe()

    # When the order is placed
    with django_capture_on_commit_callbacks(execute=True):
        order = order_place(
            principal=Principal(id=USER_ID, is_staff=False, caller="gateway"),
            items=[{"product_id": product.id, "quantity": 1}],
            payment_method="pm_card_declined",
        )

    # Then order.created is followed by order.cancelled naming the decline
    messages = published_events()
    assert [m.routing_key for m in messages] == ["order.created", "order.cancelled"]
    cancelled = messages[1].event
    assert cancelled["aggregate_id"] == str(order.id)
    assert cancelled["data"] == {
        **messages[0].event["data"],
        "status": "cancelled",
        "reason": "payment_declined",
        "failure_code": "card_declined",
        "refunded": False,
    }


def test_an_order_out_of_stock_is_refused_and_publishes_nothing(http, user_exists, event_broker) -> None:
    # Given a product with one unit left, and a queue bound to every event type
    product = ProductFactory(stock=1)
    published_events = event_broker.subscribe()

    # When two are ordered, the order is refused before any charge
    with pytest.raises(OutOfStock):
        order_place(
            principal=Principal(id=USER_ID, is_staff=False, caller="gateway"),
            items=[{"product_id": product.id, "quantity": 2}],
            payment_method="pm_card_visa",
        )

    # Then nothing was written, and nothing announced
    assert published_events() == []
    assert not Order.objects.exists()
    assert [call.request.url for call in http.calls] == [user_url()]
