"""The order saga through the API and the background sweeper, against a fake payment service at the
network edge (orders.tests.conftest.FakePaymentService) that counts what was really charged."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from catalog.models import Product, StockReservation
from catalog.services import stock_reserve
from catalog.tests.factories import ProductFactory
from common.testing import EventBroker, assertion_headers
from orders import saga
from orders.models import Order
from orders.tests.conftest import USER_ID, FakePaymentService
from orders.tests.factories import OrderFactory, OrderItemFactory

pytestmark = pytest.mark.django_db

ORDERS = "/api/v1/orders/"


@pytest.fixture(autouse=True)
def retry_at_once(settings: Any) -> None:
    # No waiting between attempts: each sweep below is "later".
    settings.ORDER_SAGA_RETRY_BASE_SECONDS = 0


def place(client: Client, product: Product, *, quantity: int = 1, method: str = "tok_visa", **headers: str) -> Any:
    body = {"items": [{"product_id": product.id, "quantity": quantity}], "payment_method": method}
    return client.post(
        ORDERS,
        json.dumps(body),
        content_type="application/json",
        headers={**assertion_headers(user_id=USER_ID), **headers},
    )


def cancel(client: Client, order_id: int, user_id: int = USER_ID) -> Any:
    return client.post(f"{ORDERS}{order_id}/cancel", headers=assertion_headers(user_id=user_id))


def history(order: Order) -> list[tuple[str, str, str]]:
    return list(order.history.values_list("event", "from_status", "to_status"))


def sweep_later() -> int:
    """What the sweeper (manage.py saga_sweeper) does once the retry delay has passed."""
    Order.objects.filter(next_attempt_at__isnull=False).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    return saga.sweep()


def held(product: Product) -> int:
    return sum(
        StockReservation.objects.filter(product=product, status=StockReservation.Status.HELD).values_list(
            "quantity", flat=True
        )
    )


# --- the happy path and a decline -------------------------------------------------------------------------


def test_a_paid_order_holds_its_stock_is_charged_once_and_confirmed(
    client, user_exists, fake_payments: FakePaymentService, event_broker: EventBroker
) -> None:
    product = ProductFactory(stock=10, price=Decimal("4.00"))
    events = event_broker.subscribe("order.*")

    response = place(client, product, quantity=3)

    assert response.status_code == 201, response.content
    order = Order.objects.get()
    assert (order.status, order.payment_status, order.next_attempt_at) == ("confirmed", "succeeded", None)
    assert [p["amount"] for p in fake_payments.charged(order.id)] == ["12.00"]
    product.refresh_from_db()
    assert (product.stock, held(product)) == (7, 3)
    assert history(order) == [
        ("placed", "", "pending"),
        ("payment_requested", "pending", "payment_pending"),
        ("confirmed", "payment_pending", "confirmed"),
    ]
    assert [e.routing_key for e in events()] == ["order.created", "order.confirmed"]


def test_a_declined_card_cancels_the_order_and_releases_its_stock(
    client, user_exists, fake_payments: FakePaymentService, event_broker: EventBroker
) -> None:
    product = ProductFactory(stock=10)
    events = event_broker.subscribe("order.*")

    response = place(client, product, quantity=4, method="tok_chargeDeclined")

    assert response.status_code == 201
    assert response.json()["cancellation_reason"] == "payment_declined"
    order = Order.objects.get()
    assert (order.status, order.payment_status, order.payment_failure_code) == ("cancelled", "failed", "card_declined")
    product.refresh_from_db()
    assert (product.stock, held(product)) == (10, 0)
    assert [event for event, _, _ in history(order)] == ["placed", "payment_requested", "cancelled", "stock_released"]
    published = events()
    assert [e.routing_key for e in published] == ["order.created", "order.cancelled"]
    assert published[1].event["data"]["reason"] == "payment_declined"


def test_an_order_beyond_the_stock_is_refused_with_409_and_nothing_is_charged(
    client, user_exists, fake_payments: FakePaymentService
) -> None:
    product = ProductFactory(stock=2)

    response = place(client, product, quantity=3)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "out_of_stock"
    assert response.json()["error"]["details"] == {"product_ids": [product.id]}
    assert not Order.objects.exists()
    assert fake_payments.charge_calls == 0
    product.refresh_from_db()
    assert product.stock == 2


# --- unknown outcomes and the background --------------------------------------------------------------------


def test_a_charge_whose_answer_was_lost_is_found_by_reconciliation_and_never_charged_twice(
    client, user_exists, fake_payments: FakePaymentService, event_broker: EventBroker
) -> None:
    # Given a payment service that charges but whose answer never arrives
    product = ProductFactory(stock=5)
    fake_payments.mode = "lose_answers"
    events = event_broker.subscribe("order.*")

    # When the customer orders, the request answers 202: the outcome is unknown
    response = place(client, product)
    assert response.status_code == 202
    assert response["Location"] == f"/api/v1/orders/{response.json()['id']}/"
    assert response.json()["status"] == "payment_pending"
    order = Order.objects.get()
    assert len(fake_payments.charged(order.id)) == 1  # it did go through, unknown to us

    # Then once the payment service answers again, the sweeper's lookup finds the charge and confirms
    fake_payments.mode = "up"
    sweep_later()

    order.refresh_from_db()
    assert order.status == "confirmed"
    assert order.payment_id == fake_payments.charged(order.id)[0]["id"]
    assert (fake_payments.charge_calls, fake_payments.lookup_calls) == (1, 1)  # no second charge request
    assert [e for e, _, _ in history(order)] == ["placed", "payment_requested", "payment_unknown", "confirmed"]
    assert [e.routing_key for e in events()] == ["order.created", "order.confirmed"]


def test_with_the_payment_service_down_the_order_is_accepted_and_completed_in_the_background(
    client, user_exists, fake_payments: FakePaymentService, event_broker: EventBroker
) -> None:
    product = ProductFactory(stock=5)
    fake_payments.mode = "down"
    events = event_broker.subscribe("order.*")

    response = place(client, product)

    assert response.status_code == 202
    order_id = response.json()["id"]
    # Still down at the next sweep: still pending, asked again later
    assert sweep_later() == 1
    assert Order.objects.get().status == "payment_pending"
    # Back up: the lookup finds nothing, so the sweeper charges (with the same key), and confirms
    fake_payments.mode = "up"
    sweep_later()

    order = Order.objects.get()
    assert order.status == "confirmed"
    assert len(fake_payments.charged(order_id)) == 1
    assert [e for e, _, _ in history(order)] == [
        "placed",
        "payment_requested",
        "payment_unknown",
        "payment_unknown",
        "confirmed",
    ]
    assert order.payment_attempts == 3
    assert (
        client.get(f"{ORDERS}{order_id}/", headers=assertion_headers(user_id=USER_ID)).json()["status"] == "confirmed"
    )
    assert [e.routing_key for e in events()] == ["order.created", "order.confirmed"]


def test_a_decline_learned_in_the_background_cancels_and_releases_the_stock(
    client, user_exists, fake_payments: FakePaymentService
) -> None:
    product = ProductFactory(stock=5)
    fake_payments.mode = "timeout"

    assert place(client, product, quantity=2, method="tok_chargeDeclined").status_code == 202
    product.refresh_from_db()
    assert product.stock == 3
    fake_payments.mode = "up"
    sweep_later()

    order = Order.objects.get()
    assert (order.status, order.cancellation_reason) == ("cancelled", "payment_declined")
    product.refresh_from_db()
    assert (product.stock, held(product)) == (5, 0)


def test_the_sweeper_leaves_an_order_alone_while_its_step_is_leased(
    client, user_exists, fake_payments: FakePaymentService
) -> None:
    product = ProductFactory()
    fake_payments.mode = "down"
    place(client, product)
    # The step is scheduled for later (as the request left it): nothing is due yet
    Order.objects.update(next_attempt_at=timezone.now() + timedelta(minutes=1))

    assert saga.sweep() == 0
    assert fake_payments.lookup_calls == 0


def test_redelivered_steps_do_nothing_twice(client, user_exists, fake_payments: FakePaymentService) -> None:
    product = ProductFactory(stock=5)
    place(client, product)
    order = Order.objects.get()

    # A redelivered sweep or step on a confirmed order, and a second reservation of its stock
    saga.advance(order.id, only_if_due=False)
    sweep_later()
    stock_reserve(order_reference=order.reference, quantities={product.id: 1})

    assert len(fake_payments.charged()) == 1
    assert fake_payments.charge_calls == 1
    product.refresh_from_db()
    assert product.stock == 4
    assert len(history(order)) == 3


# --- cancelling -------------------------------------------------------------------------------------------


def pending_order(product: Product, quantity: int = 2) -> Order:
    """An order whose charge has not been asked for yet (as left by a process that died right after
    writing it)."""
    order = OrderFactory(
        status=Order.Status.PENDING, payment_id=None, payment_status="", next_attempt_at=timezone.now()
    )
    OrderItemFactory(order=order, product=product, quantity=quantity)
    stock_reserve(order_reference=order.reference, quantities={product.id: quantity})
    return order


def test_cancelling_a_pending_order_releases_its_stock_and_charges_nothing(
    client, fake_payments: FakePaymentService, event_broker: EventBroker
) -> None:
    product = ProductFactory(stock=5)
    order = pending_order(product)
    events = event_broker.subscribe("order.cancelled")

    response = cancel(client, order.id)

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["cancellation_reason"]) == ("cancelled", "customer_cancelled")
    product.refresh_from_db()
    assert product.stock == 5
    assert fake_payments.charge_calls == fake_payments.refund_calls == 0
    [published] = events()
    assert published.event["data"]["reason"] == "customer_cancelled"
    assert published.event["data"]["refunded"] is False
    # and the sweeper never charges it afterwards
    sweep_later()
    assert fake_payments.charge_calls == 0


def test_cancelling_a_confirmed_order_refunds_it_exactly_once(
    client, user_exists, fake_payments: FakePaymentService, event_broker: EventBroker
) -> None:
    product = ProductFactory(stock=5)
    order_id = place(client, product, quantity=2).json()["id"]
    events = event_broker.subscribe("order.cancelled")

    first = cancel(client, order_id)
    again = cancel(client, order_id)
    sweep_later()

    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json()["status"] == "cancelled"
    assert first.json()["payment"]["status"] == "refunded"
    assert fake_payments.refund_calls == 1
    assert [p["status"] for p in fake_payments.by_order(order_id)] == ["refunded"]
    order = Order.objects.get()
    assert (order.status, order.payment_status, order.cancellation_reason) == (
        "cancelled",
        "refunded",
        "customer_cancelled",
    )
    product.refresh_from_db()
    assert product.stock == 5
    assert [e for e, _, _ in history(order)][-3:] == ["refund_requested", "cancelled", "stock_released"]
    [published] = events()
    assert published.event["data"]["refunded"] is True


def test_a_refund_the_payment_service_cannot_take_now_finishes_in_the_background(
    client, user_exists, fake_payments: FakePaymentService
) -> None:
    product = ProductFactory(stock=5)
    order_id = place(client, product).json()["id"]
    fake_payments.mode = "down"

    response = cancel(client, order_id)

    assert response.status_code == 202
    assert response.json()["status"] == "refund_pending"
    fake_payments.mode = "up"
    sweep_later()
    order = Order.objects.get()
    assert (order.status, order.payment_status) == ("cancelled", "refunded")
    assert [p["status"] for p in fake_payments.by_order(order_id)] == ["refunded"]


def test_an_order_whose_payment_is_unknown_cannot_be_cancelled_yet(
    client, user_exists, fake_payments: FakePaymentService
) -> None:
    fake_payments.mode = "lose_answers"
    order_id = place(client, ProductFactory()).json()["id"]

    response = cancel(client, order_id)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "payment_outcome_pending"
    assert Order.objects.get().status == "payment_pending"


def test_someone_elses_order_cannot_be_cancelled_or_its_history_read(client, fake_payments) -> None:
    order = OrderFactory(user_id=99)

    assert cancel(client, order.id).status_code == 404
    assert client.get(f"{ORDERS}{order.id}/history", headers=assertion_headers(user_id=USER_ID)).status_code == 404
    order.refresh_from_db()
    assert order.status == "confirmed"
    assert fake_payments.refund_calls == 0


# --- history ----------------------------------------------------------------------------------------------


def test_the_history_lists_every_step_oldest_first(client, user_exists, fake_payments: FakePaymentService) -> None:
    order_id = place(client, ProductFactory()).json()["id"]
    cancel(client, order_id)

    response = client.get(f"{ORDERS}{order_id}/history", headers=assertion_headers(user_id=USER_ID))

    assert response.status_code == 200
    assert [(e["event"], e["from_status"], e["to_status"]) for e in response.json()] == [
        ("placed", "", "pending"),
        ("payment_requested", "pending", "payment_pending"),
        ("confirmed", "payment_pending", "confirmed"),
        ("refund_requested", "confirmed", "refund_pending"),
        ("cancelled", "refund_pending", "cancelled"),
        ("stock_released", "cancelled", "cancelled"),
    ]
    assert set(response.json()[0]) == {"event", "from_status", "to_status", "details", "created_at"}


def test_the_sweeper_command_settles_due_orders(user_exists, fake_payments: FakePaymentService, client) -> None:
    fake_payments.mode = "down"
    place(client, ProductFactory())
    fake_payments.mode = "up"
    Order.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))

    call_command("saga_sweeper", "--once", stdout=io.StringIO())

    assert Order.objects.get().status == "confirmed"
