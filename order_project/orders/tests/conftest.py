"""Fixtures for the orders tests: the user and payment services stubbed at the HTTP edge (and only
there)."""

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from django.conf import settings
from requests import PreparedRequest

from common.http import forget_clients
from common.internal_auth import HEADER as ASSERTION_HEADER
from common.internal_auth import Principal, verify_assertion
from orders.clients import payment_service_client, user_service_client

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


# What a responses callback returns: (status, headers, body), or an exception the client then raises.
Answer = tuple[int, dict[str, str], str] | Exception


class FakePaymentService:
    """The payment service as the saga sees it over the network — charge with an idempotency key, look a
    charge up by its key, refund — with its rules (one payment per key, refund once) and the network's
    failures, so tests can count what was really charged. Everything on our side of the edge is real.

    ``mode``: "up"; "down" (connection refused, nothing happens); "lose_answers" (the request is carried
    out, then the answer times out); "timeout" (read timeout before anything happens); "error" (500);
    "slow" (answers after ``delay`` seconds)."""

    DECLINED = {"tok_chargeDeclined": "card_declined", "tok_chargeDeclinedInsufficientFunds": "insufficient_funds"}
    SUCCEEDS = {"tok_visa", "tok_mastercard", "tok_amex", "pm_card_visa"}

    def __init__(self, mock: responses.RequestsMock) -> None:
        self.mode = "up"
        self.delay = 0.0
        self.payments: dict[str, dict[str, Any]] = {}  # by idempotency key
        self.charge_calls = 0
        self.lookup_calls = 0
        self.refund_calls = 0
        self._lock = threading.Lock()
        base = settings.PAYMENT_SERVICE_URL
        mock.add_callback(
            responses.POST, f"{base}/api/v1/payments/", callback=self._charge, content_type="application/json"
        )
        mock.add_callback(
            responses.GET, f"{base}/api/v1/payments/", callback=self._lookup, content_type="application/json"
        )
        refund_url = re.compile(rf"{re.escape(base)}/api/v1/payments/\d+/refund")
        mock.add_callback(responses.POST, refund_url, callback=self._refund, content_type="application/json")

    # invariants the tests check
    def charged(self, order_id: int | None = None) -> list[dict[str, Any]]:
        """Payments that took money (succeeded, including those refunded since)."""
        return [
            p
            for p in self.payments.values()
            if p["status"] in ("succeeded", "refunded") and (order_id is None or p["order_id"] == order_id)
        ]

    def by_order(self, order_id: int) -> list[dict[str, Any]]:
        return [p for p in self.payments.values() if p["order_id"] == order_id]

    def _network(self, carry_out: Callable[[], Answer]) -> Answer:
        if self.mode == "down":
            return requests.ConnectionError("connection refused")
        if self.mode == "timeout":
            return requests.ReadTimeout("read timed out")
        if self.mode == "error":
            return 500, {}, json.dumps({"error": {"code": "internal_error"}})
        if self.mode == "slow":
            time.sleep(self.delay)
        with self._lock:
            answer = carry_out()
        if self.mode == "lose_answers":
            return requests.ReadTimeout("read timed out")
        return answer

    def _charge(self, request: PreparedRequest) -> Answer:
        def carry_out() -> Answer:
            self.charge_calls += 1
            body = json.loads(request.body or b"{}")
            key = request.headers["Idempotency-Key"]
            if key in self.payments:
                return 201, {}, json.dumps(self.payments[key])
            method = body["payment_method"]
            if method not in self.SUCCEEDS and method not in self.DECLINED:
                error = {"code": "invalid_payment_method", "message": "Unknown payment method.", "details": {}}
                return 400, {}, json.dumps({"error": error})
            self.payments[key] = {
                "id": len(self.payments) + 1,
                "order_id": body["order_id"],
                "user_id": assertion_of(request, audience="payments").id,
                "status": "failed" if method in self.DECLINED else "succeeded",
                "amount": body["amount"],
                "currency": body["currency"],
                "failure_code": self.DECLINED.get(method),
            }
            return 201, {}, json.dumps(self.payments[key])

        return self._network(carry_out)

    def _lookup(self, request: PreparedRequest) -> Answer:
        def carry_out() -> Answer:
            self.lookup_calls += 1
            key = parse_qs(urlsplit(request.url or "").query)["idempotency_key"][0]
            found = [self.payments[key]] if key in self.payments else []
            return 200, {}, json.dumps({"results": found})

        return self._network(carry_out)

    def _refund(self, request: PreparedRequest) -> Answer:
        def carry_out() -> Answer:
            self.refund_calls += 1
            payment_id = int((request.url or "").rstrip("/").split("/")[-2])
            payment = next(p for p in self.payments.values() if p["id"] == payment_id)
            if payment["status"] == "failed":
                return 409, {}, json.dumps({"error": {"code": "payment_not_refundable"}})
            payment["status"] = "refunded"
            return 200, {}, json.dumps(payment)

        return self._network(carry_out)


@pytest.fixture
def fake_payments(http: responses.RequestsMock) -> FakePaymentService:
    return FakePaymentService(http)


def forget_service_clients() -> None:
    """New clients for the next calls: their circuit breakers and instance lists start afresh."""
    user_service_client.cache_clear()
    payment_service_client.cache_clear()
    forget_clients()
    # Real mode shares breaker states through Redis: a fresh prefix, so no state from before is adopted.
    settings.SERVICE_BREAKER_REDIS_PREFIX = f"test-breaker-{uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
def fresh_service_clients() -> Iterator[None]:
    # The clients are cached per process, and with them their breakers: one test's failures must not leave
    # the next one's calls refused.
    forget_service_clients()
    yield
    forget_service_clients()
