from typing import Any

import pytest

from common.events import Event
from users.models import User
from users.tests.factories import UserFactory


@pytest.fixture
def customer(db: Any) -> User:
    return UserFactory(email="ann@example.com", name="Ann Example")


@pytest.fixture
def user_created(customer: User) -> Event:
    return Event(
        type="user.created",
        data={"user_id": customer.id, "email": customer.email, "name": customer.name},
        source="users",
    )


@pytest.fixture
def order_confirmed(customer: User) -> Event:
    return Event(
        type="order.confirmed",
        source="orders",
        data={
            "order_id": 42,
            "user_id": customer.id,
            "status": "confirmed",
            "total_amount": "49.97",
            "currency": "USD",
            "items": [
                {
                    "product_id": 1,
                    "sku": "MUG-01",
                    "name": "Coffee mug",
                    "quantity": 2,
                    "unit_price": "19.99",
                    "line_total": "39.98",
                },
                {
                    "product_id": 2,
                    "sku": "TEA-07",
                    "name": "Green tea",
                    "quantity": 1,
                    "unit_price": "9.99",
                    "line_total": "9.99",
                },
            ],
        },
    )


@pytest.fixture
def order_cancelled_refunded(order_confirmed: Event) -> Event:
    data = {**order_confirmed.data, "status": "cancelled", "reason": "customer_cancelled", "refunded": True}
    return Event(type="order.cancelled", source="orders", data={**data, "failure_code": None})


@pytest.fixture
def order_cancelled_declined(order_confirmed: Event) -> Event:
    data = {**order_confirmed.data, "status": "cancelled", "reason": "payment_declined", "refunded": False}
    return Event(type="order.cancelled", source="orders", data={**data, "failure_code": "card_declined"})
