"""Fixtures for the orders tests: the user and payment services stubbed at the HTTP edge (and only
there)."""

import json
from collections.abc import Callable, Iterator

import pytest
import responses
from django.conf import settings
from requests import PreparedRequest

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
