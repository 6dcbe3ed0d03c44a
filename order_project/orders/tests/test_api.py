import json
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.http import HttpResponse
from django.test import Client

from catalog.models import StockReservation
from catalog.tests.factories import ProductFactory
from common.testing import assertion_headers
from orders.models import Order, OrderItem
from orders.tests.conftest import USER_ID, assertion_of, payments_url, user_url
from orders.tests.factories import OrderFactory, OrderItemFactory

pytestmark = pytest.mark.django_db

ORDERS = "/api/v1/orders/"


def place(client: Client, body: object, *, user_id: int | None = USER_ID) -> HttpResponse:
    return client.post(
        ORDERS, data=json.dumps(body), content_type="application/json", headers=assertion_headers(user_id=user_id)
    )


def error_of(response: HttpResponse) -> dict[str, Any]:
    return response.json()["error"]


def nothing_written() -> bool:
    return not Order.objects.exists() and not OrderItem.objects.exists()


# --- placing an order ------------------------------------------------------------------------------------


def test_placing_an_order_charges_the_catalog_price_and_confirms_it(client, http, user_exists, payment_service) -> None:
    # Given two products and a payment service that accepts the charge
    mug = ProductFactory(sku="MUG-001", name="Ceramic mug", price=Decimal("12.50"))
    tee = ProductFactory(sku="TEE-001", name="Cotton T-shirt", price=Decimal("19.99"))
    payment_service("succeeded", payment_id=501)

    # When the customer orders them, trying to set their own prices
    response = place(
        client,
        {
            "items": [
                {"product_id": mug.id, "quantity": 1, "unit_price": "0.01"},
                {"product_id": tee.id, "quantity": 2, "price": "0.01"},
            ],
            "payment_method": "pm_card_visa",
            "total_amount": "0.02",
        },
    )

    # Then the order is confirmed at the catalog's prices
    assert response.status_code == 201, response.content
    order = Order.objects.get()
    body = response.json()
    assert response["Location"] == f"/api/v1/orders/{order.id}/"
    assert body == {
        "id": order.id,
        "user_id": USER_ID,
        "status": "confirmed",
        "cancellation_reason": "",
        "total_amount": "52.48",
        "currency": "USD",
        "items": [
            {
                "product_id": mug.id,
                "sku": "MUG-001",
                "name": "Ceramic mug",
                "quantity": 1,
                "unit_price": "12.50",
                "line_total": "12.50",
            },
            {
                "product_id": tee.id,
                "sku": "TEE-001",
                "name": "Cotton T-shirt",
                "quantity": 2,
                "unit_price": "19.99",
                "line_total": "39.98",
            },
        ],
        "payment": {"id": 501, "status": "succeeded", "amount": "52.48"},
        "created_at": body["created_at"],
    }
    assert (order.status, order.payment_id, order.payment_status) == ("confirmed", 501, "succeeded")
    assert order.total_amount == Decimal("52.48")


def test_placing_an_order_checks_the_user_and_charges_on_their_behalf(
    client, http, user_exists, payment_service
) -> None:
    # Given a product and working user and payment services
    product = ProductFactory(price=Decimal("19.99"))
    payment_service("succeeded")

    # When the customer orders two of it
    response = place(client, {"items": [{"product_id": product.id, "quantity": 2}], "payment_method": "pm_card_visa"})

    # Then the user service was asked about this user, by the order service acting for them
    assert response.status_code == 201
    user_call, payment_call = (call.request for call in http.calls)
    assert user_call.method == "GET"
    assert user_call.url == user_url(USER_ID)
    assert assertion_of(user_call, audience="users").id == USER_ID
    assert assertion_of(user_call, audience="users").caller == "orders"
    # And the payment service was asked to charge exactly this order, once, acting for the same user
    order = Order.objects.get()
    assert payment_call.url == payments_url()
    assert assertion_of(payment_call, audience="payments").id == USER_ID
    assert payment_call.headers["Idempotency-Key"] == f"order-{order.reference}-charge"
    assert json.loads(payment_call.body) == {
        "order_id": order.id,
        "amount": "39.98",
        "currency": "USD",
        "payment_method": "pm_card_visa",
    }


def test_a_declined_payment_places_a_cancelled_order(client, user_exists, payment_service) -> None:
    # Given a payment service that declines the card
    product = ProductFactory(price=Decimal("15.00"))
    payment_service("failed", failure_code="card_declined", payment_id=502)

    # When the customer orders
    response = place(client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm_declined"})

    # Then the order exists, cancelled, with the payment's outcome recorded
    assert response.status_code == 201
    assert response.json()["status"] == "cancelled"
    assert response.json()["payment"] == {"id": 502, "status": "failed", "amount": "15.00"}
    order = Order.objects.get()
    assert (order.status, order.payment_status, order.payment_failure_code) == ("cancelled", "failed", "card_declined")


def test_an_idempotent_replay_from_the_payment_service_confirms_the_order(client, user_exists, payment_service) -> None:
    # Given a payment service that answers 200 with the charge it already made for this order
    product = ProductFactory()
    payment_service("succeeded", http_status=200)

    # When the customer orders
    response = place(client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm_card_visa"})

    # Then the order is confirmed
    assert response.status_code == 201
    assert response.json()["status"] == "confirmed"


def test_an_unknown_payment_method_cancels_the_order_and_releases_its_stock(client, http, user_exists) -> None:
    # Given a payment service that does not know the token
    product = ProductFactory(stock=5)
    http.post(
        payments_url(),
        json={"error": {"code": "invalid_payment_method", "message": "Unknown payment method.", "details": {}}},
        status=400,
    )

    # When the customer orders with it
    response = place(client, {"items": [{"product_id": product.id, "quantity": 2}], "payment_method": "pm_bogus"})

    # Then the order was placed and cancelled for that reason, like a declined card, its stock back on the shelf
    assert response.status_code == 201
    assert response.json()["status"] == "cancelled"
    assert response.json()["cancellation_reason"] == "invalid_payment_method"
    assert response.json()["payment"] is None
    product.refresh_from_db()
    assert product.stock == 5


def test_the_user_comes_from_the_assertion_never_the_body(client, user_exists, payment_service) -> None:
    # Given a product
    product = ProductFactory()
    payment_service("succeeded")

    # When user 7 sends a body naming another user
    response = place(
        client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm_x", "user_id": 99}
    )

    # Then the order belongs to user 7
    assert response.status_code == 201
    assert response.json()["user_id"] == USER_ID
    assert Order.objects.get().user_id == USER_ID


# --- invalid requests: 400, no call to another service, nothing written -----------------------------------


def test_an_unknown_product_is_reported_at_its_line(client, http) -> None:
    # Given one real product
    product = ProductFactory()

    # When the second line names a product that does not exist
    response = place(
        client,
        {
            "items": [{"product_id": product.id, "quantity": 1}, {"product_id": 999999, "quantity": 1}],
            "payment_method": "pm",
        },
    )

    # Then the error points at that line, and nothing else happened
    assert response.status_code == 400
    assert error_of(response) == {
        "code": "validation_error",
        "message": "The request has invalid fields.",
        "details": {"items": [{}, {"product_id": ["Unknown product."]}]},
    }
    assert len(http.calls) == 0
    assert nothing_written()


def test_an_inactive_product_cannot_be_ordered(client, http) -> None:
    # Given a product withdrawn from sale
    product = ProductFactory(is_active=False)

    # When the customer orders it
    response = place(client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm"})

    # Then it is as unknown as a product that never existed
    assert response.status_code == 400
    assert error_of(response)["details"] == {"items": [{"product_id": ["Unknown product."]}]}
    assert len(http.calls) == 0
    assert nothing_written()


@pytest.mark.parametrize("quantity", [0, 101, "x", None, 1.5])
def test_a_quantity_outside_1_to_100_is_rejected(client, http, quantity) -> None:
    # Given a product
    product = ProductFactory()

    # When the customer orders a quantity that is not a whole number from 1 to 100
    response = place(client, {"items": [{"product_id": product.id, "quantity": quantity}], "payment_method": "pm"})

    # Then the quantity of that line is rejected
    assert response.status_code == 400
    assert error_of(response)["code"] == "validation_error"
    assert list(error_of(response)["details"]["items"][0]) == ["quantity"]
    assert len(http.calls) == 0
    assert nothing_written()


def test_line_errors_are_listed_one_entry_per_line(client, http) -> None:
    # Given two products
    first, second = ProductFactory.create_batch(2)

    # When only the second line has a bad quantity
    response = place(
        client,
        {
            "items": [{"product_id": first.id, "quantity": 1}, {"product_id": second.id, "quantity": 0}],
            "payment_method": "pm",
        },
    )

    # Then the details list both lines, the valid one empty
    assert response.status_code == 400
    assert error_of(response)["details"] == {
        "items": [{}, {"quantity": ["Ensure this value is greater than or equal to 1."]}]
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payment_method": "pm"}, "items"),
        ({"items": [], "payment_method": "pm"}, "items"),
        ({"items": "MUG-001", "payment_method": "pm"}, "items"),
        ({"items": {"product_id": 1, "quantity": 1}, "payment_method": "pm"}, "items"),
        ({"items": [{"quantity": 1}], "payment_method": "pm"}, "items"),
        ({"items": [{"product_id": 1, "quantity": 1}]}, "payment_method"),
        ({"items": [{"product_id": 1, "quantity": 1}], "payment_method": ""}, "payment_method"),
        ({"items": [{"product_id": 1, "quantity": 1}], "payment_method": "   "}, "payment_method"),
        ({"items": [{"product_id": 1, "quantity": 1}], "payment_method": "p" * 65}, "payment_method"),
        ({"items": [{"product_id": 1, "quantity": 1}], "payment_method": None}, "payment_method"),
    ],
)
def test_missing_or_malformed_fields_are_validation_errors(client, http, body, field) -> None:
    # Given product 1 exists
    ProductFactory(id=1)

    # When a field is missing or malformed
    response = place(client, body)

    # Then that field is reported
    assert response.status_code == 400
    assert error_of(response)["code"] == "validation_error"
    assert list(error_of(response)["details"]) == [field]
    assert len(http.calls) == 0
    assert nothing_written()


def test_a_body_that_is_not_an_object_is_a_validation_error(client, http) -> None:
    response = place(client, [{"product_id": 1, "quantity": 1}])

    assert response.status_code == 400
    assert error_of(response)["code"] == "validation_error"
    assert nothing_written()


def test_more_than_50_lines_are_rejected(client, http) -> None:
    # Given 51 products
    products = ProductFactory.create_batch(51)

    # When the customer orders all of them
    lines = [{"product_id": product.id, "quantity": 1} for product in products]
    response = place(client, {"items": lines, "payment_method": "pm"})

    # Then the order is too long
    assert response.status_code == 400
    assert "items" in error_of(response)["details"]
    assert nothing_written()


def test_the_same_product_twice_is_reported_at_the_repeated_line(client, http) -> None:
    # Given a product
    product = ProductFactory()

    # When it appears on two lines
    response = place(
        client,
        {
            "items": [{"product_id": product.id, "quantity": 1}, {"product_id": product.id, "quantity": 2}],
            "payment_method": "pm",
        },
    )

    # Then the second line is the one reported
    assert response.status_code == 400
    assert error_of(response)["details"] == {"items": [{}, {"product_id": ["This product is already in the order."]}]}
    assert nothing_written()


def test_products_in_different_currencies_cannot_share_an_order(client, http) -> None:
    # Given a product priced in dollars and one in euros
    dollars, euros = ProductFactory(currency="USD"), ProductFactory(currency="EUR")

    # When both are ordered together
    response = place(
        client,
        {
            "items": [{"product_id": dollars.id, "quantity": 1}, {"product_id": euros.id, "quantity": 1}],
            "payment_method": "pm",
        },
    )

    # Then the order is refused
    assert response.status_code == 400
    assert error_of(response)["details"] == {"items": ["All products of an order must be in the same currency."]}
    assert len(http.calls) == 0
    assert nothing_written()


# --- the services this one depends on ---------------------------------------------------------------------


def test_a_user_unknown_to_the_user_service_cannot_order(client, http) -> None:
    # Given the user service no longer knows the user
    product = ProductFactory()
    http.get(user_url(), json={"error": {"code": "not_found", "message": "No such user.", "details": {}}}, status=404)

    # When they order
    response = place(client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm"})

    # Then they are refused, nothing is written and no payment is attempted
    assert response.status_code == 403
    assert error_of(response)["code"] == "account_unavailable"
    assert [call.request.url for call in http.calls] == [user_url()]
    assert nothing_written()


def test_a_failing_user_service_is_an_upstream_error(client, http) -> None:
    # Given the user service fails
    product = ProductFactory()
    http.get(user_url(), json={"error": {"code": "internal_error"}}, status=500)

    # When the customer orders
    response = place(client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm"})

    # Then the gateway hears of a bad upstream
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_error"
    assert nothing_written()


def test_an_unreachable_user_service_is_unavailable_and_writes_nothing(client, http) -> None:
    # Given the user service cannot be reached
    product = ProductFactory()
    http.get(user_url(), body=requests.ConnectionError("connection refused"))

    # When the customer orders
    response = place(client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm"})

    # Then the request fails as unavailable, with nothing written
    assert response.status_code == 503
    assert error_of(response)["code"] == "upstream_unavailable"
    assert error_of(response)["details"] == {"service": "users"}
    assert nothing_written()


def assert_left_payment_pending(response: HttpResponse, *, error: str) -> Order:
    """The order exists, holds its stock, and waits for the background: 202 with where to poll."""
    assert response.status_code == 202, response.content
    order = Order.objects.get()
    assert response["Location"] == f"/api/v1/orders/{order.id}/"
    assert response.json()["status"] == "payment_pending"
    assert (order.status, order.payment_status, order.payment_id) == ("payment_pending", "", None)
    assert order.next_attempt_at is not None
    assert StockReservation.objects.get(order_reference=order.reference).status == "held"
    assert list(order.history.values_list("event", flat=True)) == ["placed", "payment_requested", "payment_unknown"]
    assert order.history.last().details == {"attempt": 1, "error": error}
    return order


def test_an_unreachable_payment_service_leaves_the_order_payment_pending(client, http, user_exists) -> None:
    # Given the payment service cannot be reached
    product = ProductFactory()
    http.post(payments_url(), body=requests.ConnectionError("connection refused"))

    # When the customer orders
    response = place(client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm"})

    # Then the order is accepted, to be charged in the background
    assert_left_payment_pending(response, error="upstream_unavailable")


def test_a_payment_service_timeout_leaves_the_order_payment_pending(client, http, user_exists) -> None:
    product = ProductFactory()
    http.post(payments_url(), body=requests.ReadTimeout("read timed out"))

    response = place(client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm"})

    assert_left_payment_pending(response, error="upstream_timeout")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"error": {"code": "internal_error"}}),
        (400, {"error": {"code": "validation_error", "details": {"amount": ["Invalid."]}}}),
        (409, {"error": {"code": "idempotency_key_in_use"}}),
    ],
)
def test_a_failing_payment_service_leaves_the_order_payment_pending(client, http, user_exists, status, body) -> None:
    # Given the payment service answers with an error other than an unknown payment method
    product = ProductFactory()
    http.post(payments_url(), json=body, status=status)

    # When the customer orders
    response = place(client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm"})

    # Then nobody knows whether it was charged: the order waits for reconciliation
    assert_left_payment_pending(response, error=f"http_{status}")


def test_a_payment_answer_about_another_charge_never_confirms_the_order(client, http, user_exists) -> None:
    # Given a payment service that answers about a different order
    product = ProductFactory(price=Decimal("10.00"))
    http.post(
        payments_url(),
        json={
            "id": 1,
            "order_id": 123456,
            "user_id": USER_ID,
            "status": "succeeded",
            "amount": "10.00",
            "currency": "USD",
            "failure_code": "",
        },
        status=200,
    )

    # When the customer orders
    response = place(client, {"items": [{"product_id": product.id, "quantity": 1}], "payment_method": "pm"})

    # Then the order is not confirmed with someone else's payment
    assert_left_payment_pending(response, error="mismatched_answer")


# --- reading orders ---------------------------------------------------------------------------------------


def test_the_list_shows_only_the_callers_orders_newest_first(client) -> None:
    # Given two orders of the caller and one of someone else
    older = OrderItemFactory(order__user_id=USER_ID).order
    newer = OrderItemFactory(order__user_id=USER_ID).order
    OrderItemFactory(order__user_id=USER_ID + 1)

    # When the caller lists their orders
    response = client.get(ORDERS, headers=assertion_headers(user_id=USER_ID))

    # Then they see their own two, newest first, with items
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [order["id"] for order in body["results"]] == [newer.id, older.id]
    assert body["next"] is None
    assert body["previous"] is None
    assert len(body["results"][0]["items"]) == 1
    assert body["results"][0]["payment"]["status"] == "succeeded"


def test_the_list_is_paginated_by_20_and_page_size_is_adjustable(client) -> None:
    # Given 25 orders
    OrderFactory.create_batch(25, user_id=USER_ID)
    headers = assertion_headers(user_id=USER_ID)

    # When the caller reads the default first page, a page of 10, and the second page of 20
    first = client.get(ORDERS, headers=headers).json()
    small = client.get(ORDERS, {"page_size": 10}, headers=headers).json()
    second = client.get(ORDERS, {"page": 2}, headers=headers).json()

    # Then the pages split the 25 orders accordingly
    assert (first["count"], len(first["results"])) == (25, 20)
    assert first["next"].endswith("/api/v1/orders/?page=2")
    assert len(small["results"]) == 10
    assert len(second["results"]) == 5
    assert second["next"] is None
    assert second["previous"] is not None


def test_page_size_is_capped_at_100(client) -> None:
    OrderFactory.create_batch(101, user_id=USER_ID)

    body = client.get(ORDERS, {"page_size": 1000}, headers=assertion_headers(user_id=USER_ID)).json()

    assert len(body["results"]) == 100


def test_a_page_past_the_end_is_not_found(client) -> None:
    response = client.get(ORDERS, {"page": 5}, headers=assertion_headers(user_id=USER_ID))

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_listing_orders_costs_the_same_queries_however_many_items(client, django_assert_num_queries) -> None:
    # Given several orders with several items each
    for _ in range(3):
        order = OrderFactory(user_id=USER_ID)
        OrderItemFactory.create_batch(3, order=order)

    # When the caller lists them, then it takes a count, a page and one query for all items
    with django_assert_num_queries(3):
        response = client.get(ORDERS, headers=assertion_headers(user_id=USER_ID))
    assert sum(len(order["items"]) for order in response.json()["results"]) == 9


def test_a_customer_can_read_their_own_order(client) -> None:
    order = OrderItemFactory(order__user_id=USER_ID, quantity=3).order

    response = client.get(f"{ORDERS}{order.id}/", headers=assertion_headers(user_id=USER_ID))

    assert response.status_code == 200
    assert response.json()["id"] == order.id
    assert response.json()["items"][0]["quantity"] == 3


@pytest.mark.parametrize("is_staff", [False, True])
def test_someone_elses_order_is_not_found_even_for_staff(client, is_staff) -> None:
    # Given another user's order
    order = OrderFactory(user_id=USER_ID + 1)

    # When the caller asks for it
    response = client.get(f"{ORDERS}{order.id}/", headers=assertion_headers(user_id=USER_ID, is_staff=is_staff))

    # Then it does not exist for them
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_an_unknown_order_is_not_found(client) -> None:
    response = client.get(f"{ORDERS}424242/", headers=assertion_headers(user_id=USER_ID))

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


# --- authentication ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("get", ORDERS), ("post", ORDERS), ("get", f"{ORDERS}1/")])
def test_anonymous_callers_must_sign_in(client, http, method, path) -> None:
    response = getattr(client, method)(path, headers=assertion_headers(user_id=None))

    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"
    assert nothing_written()


@pytest.mark.parametrize(("method", "path"), [("get", ORDERS), ("post", ORDERS), ("get", f"{ORDERS}1/")])
def test_requests_that_bypass_the_gateway_are_refused(client, method, path) -> None:
    response = getattr(client, method)(path, headers={"X-User-Id": str(USER_ID)})

    assert response.status_code == 401
    assert error_of(response)["code"] == "gateway_required"


def test_an_assertion_meant_for_another_service_is_refused(client) -> None:
    response = client.get(ORDERS, headers=assertion_headers(user_id=USER_ID, audience="payments"))

    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_service_assertion"


def test_the_schema_is_served(client) -> None:
    response = client.get("/api/schema/orders/")

    assert response.status_code == 200
    assert b"/api/v1/orders/" in response.content
    assert b"/api/v1/products/" in response.content
