"""Fixtures for the orders tests: the user and payment services stubbed at the HTTP edge (and only
there), and a queue on the test broker that catches every published event."""

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses
from django.conf import settings
from kombu import Connection, Queue, binding
from requests import PreparedRequest

from common.events import EVENTS_EXCHANGE
from common.internal_auth import HEADER as ASSERTION_HEADER
from common.internal_auth import Principal, verify_assertion

USER_ID = 7


def user_url(user_id: int = USER_ID) -> str:
    return f"{settings.USER_SERVICE_URL}/api/v1/users/{user_id}/"


def payments_url() -> str:
    return f"{settings.PAYMENT_SERVICE_URL}/api/v1/payments/"


def assertion_of(request: PreparedRequest, *, audience: str) -> Principal:
    """Who the stubbed service would see the call acting for; raises unless it is addressed to it."""
    return verify_assertion(request.headers[ASSERTION_HEADER], audience=audience, secret=settings.INTERNAL_AUTH_SECRET)


@pytest.fixture(autouse=True)
def http() -> Iterator[responses.RequestsMock]:
    """Every outgoing HTTP call in an orders test goes to these stubs; an unstubbed one fails the call."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def user_exists(http: responses.RequestsMock) -> Callable[..., None]:
    def stub(user_id: int = USER_ID) -> None:
        http.get(user_url(user_id), json={"id": user_id, "email": f"user{user_id}@example.com"}, status=200)

    stub()
    return stub


@pytest.fixture
def payment_service(http: responses.RequestsMock) -> Callable[..., None]:
    """Answer charges like the payment service: ``status`` "succeeded" or "failed", echoing the order,
    amount and currency it was asked to charge."""

    def stub(
        status: str = "succeeded", *, failure_code: str = "", http_status: int = 201, payment_id: int = 501
    ) -> None:
        def answer(request: PreparedRequest) -> tuple[int, dict[str, str], str]:
            body = json.loads(request.body or b"{}")
            payment = {
                "id": payment_id,
                "order_id": body["order_id"],
                "user_id": assertion_of(request, audience="payments").id,
                "status": status,
                "amount": body["amount"],
                "currency": body["currency"],
                "failure_code": failure_code,
            }
            return http_status, {}, json.dumps(payment)

        http.add_callback(responses.POST, payments_url(), callback=answer, content_type="application/json")

    return stub


@pytest.fixture
def published_events(event_broker: dict[str, Any]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """A fresh queue bound to every event type on the events exchange of the test broker. Calling the
    fixture's value drains it and returns what arrived (routing key, task name and event envelope) in the
    order it was published."""
    queue = Queue(f"test.{uuid.uuid4().hex}", [binding(EVENTS_EXCHANGE, routing_key="#")], durable=True)
    with Connection("filesystem://", transport_options=event_broker) as connection:
        bound = queue(connection.default_channel)
        bound.declare()

        def drain() -> list[dict[str, Any]]:
            received = []
            while (message := bound.get(no_ack=True)) is not None:
                _args, kwargs, _embed = message.decode()
                received.append(
                    {
                        "routing_key": message.delivery_info.get("routing_key"),
                        "task": message.headers.get("task"),
                        "event": kwargs["event"],
                    }
                )
            # The filesystem transport orders messages by millisecond, then at random: the envelope's
            # occurred_at (microseconds) tells the order in which they were published.
            return sorted(received, key=lambda message: message["event"]["occurred_at"])

        yield drain
        bound.delete()
