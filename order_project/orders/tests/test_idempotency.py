"""Idempotency-Key on POST /api/v1/orders/ (common.idempotency with the order service's store)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.db.models import QuerySet
from django.test import Client
from django.utils import timezone

from catalog.tests.factories import ProductFactory
from common.testing import assertion_headers
from orders.models import IdempotencyKey, Order
from orders.tests.conftest import USER_ID, FakePaymentService

ORDERS = "/api/v1/orders/"


def place(body: dict[str, Any], key: str | None, *, user_id: int = USER_ID) -> Any:
    headers = assertion_headers(user_id=user_id)
    if key is not None:
        headers["Idempotency-Key"] = key
    return Client().post(ORDERS, json.dumps(body), content_type="application/json", headers=headers)


def body_for(product_id: int, quantity: int = 1) -> dict[str, Any]:
    return {"items": [{"product_id": product_id, "quantity": quantity}], "payment_method": "tok_visa"}


@pytest.mark.django_db
def test_the_same_key_and_body_replay_the_first_response_exactly(
    user_exists, fake_payments: FakePaymentService
) -> None:
    body = body_for(ProductFactory().id)

    first = place(body, "key-1")
    again = place(json.loads(json.dumps(body, indent=2)), "key-1")  # same JSON, other spacing

    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again["Location"] == first["Location"]
    assert again["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert Order.objects.count() == 1
    assert fake_payments.charge_calls == 1


@pytest.mark.django_db
def test_a_202_is_replayed_as_a_202_even_after_the_order_moved_on(user_exists, fake_payments) -> None:
    fake_payments.mode = "down"
    body = body_for(ProductFactory().id)
    first = place(body, "key-1")
    Order.objects.update(status="cancelled")  # whatever happened since

    again = place(body, "key-1")

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.content == first.content


@pytest.mark.django_db
def test_the_same_key_with_another_body_is_refused_with_422(user_exists, fake_payments) -> None:
    product = ProductFactory()
    place(body_for(product.id), "key-1")

    response = place(body_for(product.id, quantity=2), "key-1")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert Order.objects.count() == 1


@pytest.mark.django_db
def test_another_body_with_the_key_of_an_order_committed_before_a_server_error_is_refused_with_422(
    user_exists, fake_payments: FakePaymentService
) -> None:
    product = ProductFactory()
    first = place(body_for(product.id), "key-1")
    # As after a 5xx answered once the order was committed: the key's record is freed, the order keeps the key.
    IdempotencyKey.objects.all().delete()

    other_quantity = place(body_for(product.id, quantity=2), "key-1")
    other_method = place({**body_for(product.id), "payment_method": "tok_mastercard"}, "key-1")
    same = place(body_for(product.id), "key-1")

    assert (other_quantity.status_code, other_method.status_code) == (422, 422)
    assert other_quantity.json()["error"]["code"] == "idempotency_key_reused"
    assert same.status_code == 201
    assert same.json()["id"] == first.json()["id"]
    assert Order.objects.count() == 1
    assert fake_payments.charge_calls == 1


@pytest.mark.django_db
def test_an_answer_that_cannot_be_kept_for_its_key_still_reaches_the_client(
    user_exists, fake_payments: FakePaymentService, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database refuses the write that keeps the response (only that one): the order is placed and paid,
    # and the client is told so, not given a 500 that would invite a second order with a fresh key.
    update = QuerySet.update

    def failing_update(queryset: QuerySet[Any], **fields: Any) -> int:
        if queryset.model is IdempotencyKey and "response_status" in fields:
            raise OperationalError("disk I/O error")
        return update(queryset, **fields)

    monkeypatch.setattr(QuerySet, "update", failing_update)
    body = body_for(ProductFactory().id)

    response = place(body, "key-1")

    assert response.status_code == 201
    assert Order.objects.get().status == "confirmed"
    # The key stays held until its lock times out; then a retry finds the order instead of placing another.
    assert place(body, "key-1").status_code == 409
    monkeypatch.setattr(QuerySet, "update", update)
    IdempotencyKey.objects.update(locked_at=timezone.now() - timedelta(minutes=5))
    assert place(body, "key-1").json()["id"] == response.json()["id"]
    assert fake_payments.charge_calls == 1


@pytest.mark.django_db
def test_keys_are_scoped_per_user(user_exists, fake_payments) -> None:
    user_exists(8)
    body = body_for(ProductFactory().id)

    mine = place(body, "key-1")
    theirs = place(body, "key-1", user_id=8)

    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    assert not theirs.has_header("Idempotent-Replayed")


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "é"])
def test_a_malformed_key_is_refused(fake_payments, key: str) -> None:
    response = place(body_for(ProductFactory().id), key)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db
def test_a_key_of_255_visible_characters_is_accepted(user_exists, fake_payments) -> None:
    assert place(body_for(ProductFactory().id), "~" * 255).status_code == 201


@pytest.mark.django_db
def test_a_server_error_frees_the_key_for_a_retry(http, fake_payments) -> None:
    # The user service is down: 503, nothing was written, and the key may be used again
    body = body_for(ProductFactory().id)

    assert place(body, "key-1").status_code == 503
    assert not IdempotencyKey.objects.exists()


@pytest.mark.django_db
def test_a_key_held_by_a_request_that_died_resumes_its_order_instead_of_placing_another(
    user_exists, fake_payments: FakePaymentService
) -> None:
    body = body_for(ProductFactory().id)
    first = place(body, "key-1")
    # As if that request had died after placing the order, before its response was stored
    IdempotencyKey.objects.update(response_status=None, locked_at=timezone.now() - timedelta(minutes=5))

    again = place(body, "key-1")

    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert Order.objects.count() == 1
    assert fake_payments.charge_calls == 1


@pytest.mark.django_db
def test_expired_keys_are_purged_and_their_orders_forget_them(user_exists, fake_payments) -> None:
    body = body_for(ProductFactory().id)
    place(body, "old")
    IdempotencyKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    Order.objects.update(created_at=timezone.now() - timedelta(days=2))

    call_command("purge_idempotency_keys")

    assert not IdempotencyKey.objects.exists()
    assert Order.objects.get().idempotency_key is None
    assert place(body, "old").json()["id"] != Order.objects.order_by("id").first().id  # a new order


# --- concurrency: real threads, each with its own database connection ----------------------------------------


def in_thread(function: Any) -> Any:
    def run(*args: Any) -> Any:
        try:
            return function(*args)
        finally:
            connection.close()  # each thread's own connection

    return run


@pytest.mark.django_db(transaction=True)
def test_the_same_key_while_the_first_request_runs_is_refused_with_409(
    user_exists, fake_payments: FakePaymentService
) -> None:
    # Given a payment service that takes a second to answer
    fake_payments.mode, fake_payments.delay = "slow", 1.0
    body = body_for(ProductFactory().id)
    results: dict[str, Any] = {}
    first = threading.Thread(target=in_thread(lambda: results.setdefault("first", place(body, "key-1"))))

    # When a second request with the key arrives while the first waits for the charge
    first.start()
    deadline = time.monotonic() + 5
    while not IdempotencyKey.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = place(body, "key-1")
    first.join()

    # Then it is refused as in use, and the first completes alone
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "idempotency_key_in_use"
    assert results["first"].status_code == 201
    assert fake_payments.charge_calls == 1
    # and once the first has answered, the key replays it
    third = place(body, "key-1")
    assert third.content == results["first"].content


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_identical_requests_place_one_order_and_charge_once(
    user_exists, fake_payments: FakePaymentService
) -> None:
    fake_payments.mode, fake_payments.delay = "slow", 0.3
    body = body_for(ProductFactory(stock=100).id)

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(in_thread(lambda _: place(body, "same-key")), range(10)))

    originals = [a for a in answers if a.status_code in (201, 202) and not a.has_header("Idempotent-Replayed")]
    assert len(originals) == 1, [(a.status_code, a.content) for a in answers]
    original = originals[0]
    for answer in answers:
        if answer.has_header("Idempotent-Replayed"):
            assert (answer.status_code, answer.content) == (original.status_code, original.content)
        elif answer is not original:
            assert answer.status_code == 409
            assert answer.json()["error"]["code"] == "idempotency_key_in_use"
    assert Order.objects.count() == 1
    assert len(fake_payments.charged()) == 1
    assert fake_payments.charge_calls == 1
    replay = place(body, "same-key")
    assert (replay.status_code, replay.content) == (original.status_code, original.content)
