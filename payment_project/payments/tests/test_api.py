from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from common.testing import assertion_headers
from payments.models import Payment
from payments.tests.factories import PaymentFactory

pytestmark = pytest.mark.django_db

# The test client's response (an HttpResponse with .json() and friends); Django exports no type for it.
ClientResponse = Any

CHARGE_URL = "/api/v1/payments/"
BODY = {"order_id": 42, "amount": "19.99", "currency": "USD", "payment_method": "tok_visa"}


def detail_url(payment_id: int) -> str:
    return f"/api/v1/payments/{payment_id}/"


def post_charge(
    client: Client, body: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None, **assertion: Any
) -> ClientResponse:
    """POST a charge as the order service acting for user 7 unless told otherwise."""
    claims = {"user_id": 7, "caller": "orders", **assertion}
    return client.post(
        CHARGE_URL,
        BODY if body is None else body,
        content_type="application/json",
        headers={**assertion_headers(**claims), **(headers or {})},
    )


def assert_error(response: ClientResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    return error


# --- charging -------------------------------------------------------------------------------------------


def test_charge_with_a_good_card_returns_201_with_the_succeeded_payment(client: Client) -> None:
    response = post_charge(client)

    assert response.status_code == 201
    payment = Payment.objects.get()
    assert response.json() == {
        "id": payment.id,
        "order_id": 42,
        "user_id": 7,
        "status": "succeeded",
        "amount": "19.99",
        "currency": "USD",
        "failure_code": None,
        "created_at": response.json()["created_at"],
    }
    assert response.json()["created_at"].startswith(str(payment.created_at.date()))
    assert "Idempotent-Replayed" not in response.headers


@pytest.mark.parametrize("token", ["tok_visa", "tok_mastercard", "tok_amex"])
def test_charge_with_each_succeeding_token_succeeds(client: Client, token: str) -> None:
    response = post_charge(client, {**BODY, "payment_method": token})

    assert response.status_code == 201
    assert (response.json()["status"], response.json()["failure_code"]) == ("succeeded", None)


@pytest.mark.parametrize(
    ("token", "failure_code"),
    [("tok_chargeDeclined", "card_declined"), ("tok_chargeDeclinedInsufficientFunds", "insufficient_funds")],
)
def test_declined_charge_returns_201_with_a_failed_payment(client: Client, token: str, failure_code: str) -> None:
    response = post_charge(client, {**BODY, "payment_method": token})

    assert response.status_code == 201
    assert (response.json()["status"], response.json()["failure_code"]) == ("failed", failure_code)
    assert Payment.objects.get().status == Payment.Status.FAILED


def test_charge_is_made_for_the_asserted_user_not_one_named_in_the_body(client: Client) -> None:
    response = post_charge(client, {**BODY, "user_id": 999}, user_id=7)

    assert response.status_code == 201
    assert response.json()["user_id"] == 7
    assert Payment.objects.get().user_id == 7


def test_amount_is_rendered_with_two_decimal_places(client: Client) -> None:
    response = post_charge(client, {**BODY, "amount": "5"})

    assert response.status_code == 201
    assert response.json()["amount"] == "5.00"


def test_charge_with_an_unknown_token_is_refused_and_writes_nothing(client: Client) -> None:
    response = post_charge(client, {**BODY, "payment_method": "tok_bogus"})

    error = assert_error(response, 400, "invalid_payment_method")
    assert error["message"] == "Unknown payment method."
    assert error["details"] == {"payment_method": ["Unknown payment method."]}
    assert not Payment.objects.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "0"),
        ("amount", "-1"),
        ("amount", "1.001"),
        ("amount", "abc"),
        ("amount", "NaN"),
        ("amount", "10000000000.00"),
        ("currency", "usd"),
        ("currency", "US"),
        ("currency", "USDD"),
        ("currency", "U5D"),
        ("order_id", 0),
        ("order_id", -5),
        ("order_id", "x"),
        ("order_id", 2**63),
        ("payment_method", ""),
    ],
)
def test_charge_with_an_invalid_field_is_refused_naming_the_field(client: Client, field: str, value: Any) -> None:
    response = post_charge(client, {**BODY, field: value})

    error = assert_error(response, 400, "validation_error")
    assert list(error["details"]) == [field]
    assert not Payment.objects.exists()


@pytest.mark.parametrize("field", ["order_id", "amount", "currency", "payment_method"])
def test_charge_without_a_required_field_is_refused(client: Client, field: str) -> None:
    body = {name: value for name, value in BODY.items() if name != field}

    response = post_charge(client, body)

    error = assert_error(response, 400, "validation_error")
    assert error["details"] == {field: ["This field is required."]}


def test_charge_with_malformed_json_is_refused(client: Client) -> None:
    response = client.post(
        CHARGE_URL, "{not json", content_type="application/json", headers=assertion_headers(user_id=7, caller="orders")
    )

    assert_error(response, 400, "malformed_request")


# --- who may charge --------------------------------------------------------------------------------------


def test_charge_through_the_gateway_on_a_clients_behalf_is_forbidden(client: Client) -> None:
    response = post_charge(client, caller="gateway")

    assert_error(response, 403, "permission_denied")
    assert not Payment.objects.exists()


def test_charge_by_another_service_than_orders_is_forbidden(client: Client) -> None:
    response = post_charge(client, caller="users")

    assert_error(response, 403, "permission_denied")


def test_charge_for_an_anonymous_user_is_unauthenticated(client: Client) -> None:
    response = post_charge(client, user_id=None)

    assert_error(response, 401, "not_authenticated")
    assert not Payment.objects.exists()


def test_charge_without_a_service_assertion_requires_the_gateway(client: Client) -> None:
    response = client.post(CHARGE_URL, BODY, content_type="application/json")

    assert_error(response, 401, "gateway_required")


def test_charge_with_an_assertion_for_another_service_is_refused(client: Client) -> None:
    response = post_charge(client, audience="orders")

    assert_error(response, 401, "invalid_service_assertion")
    assert not Payment.objects.exists()


def test_charge_with_a_forged_assertion_is_refused(client: Client) -> None:
    response = client.post(
        CHARGE_URL, BODY, content_type="application/json", headers={"X-Service-Assertion": "not.a.jwt"}
    )

    assert_error(response, 401, "invalid_service_assertion")


# --- idempotency -----------------------------------------------------------------------------------------


def test_repeated_charge_with_the_same_key_replays_the_first_payment(client: Client) -> None:
    first = post_charge(client, headers={"Idempotency-Key": "order-42-1"})

    again = post_charge(client, headers={"Idempotency-Key": "order-42-1"})

    assert (first.status_code, again.status_code) == (201, 201)  # the first response, exactly
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1


def test_repeated_declined_charge_with_the_same_key_replays_the_failure(client: Client) -> None:
    body = {**BODY, "payment_method": "tok_chargeDeclined"}
    first = post_charge(client, body, headers={"Idempotency-Key": "k"})

    again = post_charge(client, body, headers={"Idempotency-Key": "k"})

    assert again.status_code == 201
    assert again.content == first.content
    assert again.json()["status"] == "failed"


def test_reusing_a_key_with_a_different_body_is_refused(client: Client) -> None:
    post_charge(client, headers={"Idempotency-Key": "k"})

    response = post_charge(client, {**BODY, "amount": "20.00"}, headers={"Idempotency-Key": "k"})

    assert_error(response, 422, "idempotency_key_reused")
    assert Payment.objects.count() == 1


def test_reusing_a_key_for_another_user_is_refused(client: Client) -> None:
    post_charge(client, headers={"Idempotency-Key": "k"}, user_id=7)

    response = post_charge(client, headers={"Idempotency-Key": "k"}, user_id=8)

    assert_error(response, 422, "idempotency_key_reused")


@pytest.mark.parametrize("key", ["x" * 256, "", "with space", "é"])
def test_charge_with_a_malformed_idempotency_key_is_refused(client: Client, key: str) -> None:
    response = post_charge(client, headers={"Idempotency-Key": key})

    assert_error(response, 400, "invalid_idempotency_key")
    assert not Payment.objects.exists()


def test_a_lookup_needs_an_idempotency_key(client: Client) -> None:
    response = client.get(CHARGE_URL, headers=assertion_headers(user_id=7, caller="orders"))

    assert_error(response, 400, "validation_error")


# --- reading ---------------------------------------------------------------------------------------------


def test_user_reads_their_own_payment(client: Client) -> None:
    payment = PaymentFactory(user_id=7, declined=True)

    response = client.get(detail_url(payment.id), headers=assertion_headers(user_id=7))

    assert response.status_code == 200
    assert response.json() == {
        "id": payment.id,
        "order_id": payment.order_id,
        "user_id": 7,
        "status": "failed",
        "amount": "19.99",
        "currency": "USD",
        "failure_code": "card_declined",
        "created_at": response.json()["created_at"],
    }


def test_order_service_reads_the_payment_of_the_user_it_acts_for(client: Client) -> None:
    payment = PaymentFactory(user_id=7)

    response = client.get(detail_url(payment.id), headers=assertion_headers(user_id=7, caller="orders"))

    assert response.status_code == 200


def test_reading_someone_elses_payment_is_not_found(client: Client) -> None:
    payment = PaymentFactory(user_id=8)

    response = client.get(detail_url(payment.id), headers=assertion_headers(user_id=7))

    assert_error(response, 404, "not_found")


def test_staff_read_anyones_payment(client: Client) -> None:
    payment = PaymentFactory(user_id=8)

    response = client.get(detail_url(payment.id), headers=assertion_headers(user_id=1, is_staff=True))

    assert response.status_code == 200
    assert response.json()["id"] == payment.id


@pytest.mark.parametrize("payment_id", [999999, 2**63, 10**30])
def test_reading_a_nonexistent_payment_is_not_found(client: Client, payment_id: int) -> None:
    response = client.get(detail_url(payment_id), headers=assertion_headers(user_id=1, is_staff=True))

    assert_error(response, 404, "not_found")


def test_reading_a_payment_anonymously_is_unauthenticated(client: Client) -> None:
    payment = PaymentFactory()

    response = client.get(detail_url(payment.id), headers=assertion_headers())

    assert_error(response, 401, "not_authenticated")


def test_reading_a_payment_without_an_assertion_requires_the_gateway(client: Client) -> None:
    payment = PaymentFactory()

    response = client.get(detail_url(payment.id))

    assert_error(response, 401, "gateway_required")


# --- documentation ---------------------------------------------------------------------------------------


def test_schema_is_served(client: Client) -> None:
    response = client.get("/api/schema/payments/")

    assert response.status_code == 200
    assert b"/api/v1/payments/{payment_id}/" in response.content
    assert b"Idempotency-Key" in response.content


def test_schema_generates_valid_without_warnings(tmp_path: Path) -> None:
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))

    assert "/api/v1/payments/" in (tmp_path / "schema.yml").read_text()
