"""The newcomer's journey through the gateway, against the real running system."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import requests
from conftest import PASSWORD, Client, sent_mails, sign_up, wait_for_mail

import manage_all


def test_health_reports_every_service_up(anonymous: Client) -> None:
    response = anonymous.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["services"]) == {"users", "orders", "payments"}
    for name, service in body["services"].items():
        checks = service["checks"]
        events = checks.pop("events")  # the figures beside the checks: outbox backlog, dead letters
        assert service["status"] == "ok", name
        assert checks == {"database": "ok", "cache": "ok", "broker": "ok", "outbox": "ok", "deadletters": "ok"}, name
        assert events["outbox"]["pending"] >= 0, name
        if name == "users":  # the one consumer: its queue's dead letters are counted
            assert isinstance(events["dead_letters"]["users.events"], int)


def test_a_newcomer_signs_up_orders_pays_and_gets_both_emails(anonymous: Client, system: manage_all.System) -> None:
    # given a newcomer who signs up and logs in
    customer, account = sign_up(system.url("gateway"), name="Grace Hopper")
    assert "password" not in account
    assert account["name"] == "Grace Hopper"
    me = customer.get("/api/v1/users/me/")
    assert me.status_code == 200
    assert me.json()["email"] == account["email"]

    # when they browse the catalog and order two products, paying with a card that works
    products = anonymous.get("/api/v1/products/").json()
    assert len(products) >= 2
    assert {"id", "sku", "name", "price", "currency"} <= set(products[0])
    first, second = products[0], products[1]
    response = customer.post(
        "/api/v1/orders/",
        json={
            "items": [{"product_id": first["id"], "quantity": 2}, {"product_id": second["id"], "quantity": 1}],
            "payment_method": "tok_visa",
        },
    )

    # then the order is confirmed and paid, priced from the catalog
    assert response.status_code == 201, response.text
    order = response.json()
    expected_total = Decimal(first["price"]) * 2 + Decimal(second["price"])
    assert order["status"] == "confirmed"
    assert order["user_id"] == account["id"]
    assert Decimal(order["total_amount"]) == expected_total
    assert order["payment"]["status"] == "succeeded"
    assert Decimal(order["payment"]["amount"]) == expected_total
    assert [(i["product_id"], i["quantity"]) for i in order["items"]] == [(first["id"], 2), (second["id"], 1)]

    # and it is theirs to read, with its payment
    assert customer.get(f"/api/v1/orders/{order['id']}/").json()["id"] == order["id"]
    listed = customer.get("/api/v1/orders/").json()
    assert [o["id"] for o in listed["results"]] == [order["id"]]
    payment = customer.get(f"/api/v1/payments/{order['payment']['id']}/")
    assert payment.status_code == 200
    assert payment.json()["status"] == "succeeded"

    # and the worker sent a welcome email and an order confirmation naming the order, its items and total
    wait_for_mail(system.var_dir, account["email"], "Welcome")
    confirmation = wait_for_mail(system.var_dir, account["email"], f"#{order['id']}")
    assert first["name"] in confirmation
    assert second["name"] in confirmation
    assert str(expected_total) in confirmation


def test_a_declined_card_cancels_the_order_and_sends_no_confirmation(customer: Any, system: manage_all.System) -> None:
    client, account = customer
    product = client.get("/api/v1/products/").json()[0]

    response = client.post(
        "/api/v1/orders/",
        json={"items": [{"product_id": product["id"], "quantity": 1}], "payment_method": "tok_chargeDeclined"},
    )

    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "cancelled"
    assert order["payment"]["status"] == "failed"
    cancellation = wait_for_mail(system.var_dir, account["email"], f"#{order['id']} is cancelled")
    assert "The payment was declined." in cancellation
    assert "Nothing was charged." in cancellation
    assert not [m for m in sent_mails(system.var_dir) if f"#{order['id']} is confirmed" in m]


def test_invalid_orders_are_refused_with_field_details_and_nothing_is_written(customer: Any) -> None:
    client, _ = customer
    product = client.get("/api/v1/products/").json()[0]
    line = {"product_id": product["id"], "quantity": 1}
    bad_bodies = {
        "unknown product": {"items": [{"product_id": 999_999, "quantity": 1}], "payment_method": "tok_visa"},
        "quantity 0": {"items": [{**line, "quantity": 0}], "payment_method": "tok_visa"},
        "quantity 101": {"items": [{**line, "quantity": 101}], "payment_method": "tok_visa"},
        "no items": {"items": [], "payment_method": "tok_visa"},
    }

    for label, body in bad_bodies.items():
        response = client.post("/api/v1/orders/", json=body)
        assert response.status_code == 400, (label, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error", label
        assert error["details"], label

    assert client.get("/api/v1/orders/").json()["count"] == 0


def test_an_unknown_payment_token_cancels_the_order_like_a_declined_card(customer: Any) -> None:
    # The order is written (and its stock held) before the payment service is asked, so a token it does
    # not know ends the order the way a decline does.
    client, _ = customer
    product = client.get("/api/v1/products/").json()[0]

    response = client.post(
        "/api/v1/orders/",
        json={"items": [{"product_id": product["id"], "quantity": 1}], "payment_method": "tok_doesNotExist"},
    )

    assert response.status_code == 201, response.text
    assert (response.json()["status"], response.json()["cancellation_reason"]) == (
        "cancelled",
        "invalid_payment_method",
    )


def test_someone_elses_order_and_payment_are_not_found(gateway: str) -> None:
    alice, _ = sign_up(gateway, name="Alice")
    mallory, mallory_account = sign_up(gateway, name="Mallory")
    product = alice.get("/api/v1/products/").json()[0]
    order = alice.post(
        "/api/v1/orders/",
        json={"items": [{"product_id": product["id"], "quantity": 1}], "payment_method": "tok_visa"},
    ).json()

    for path in (
        f"/api/v1/orders/{order['id']}/",
        f"/api/v1/orders/{order['id']}/history",
        f"/api/v1/payments/{order['payment']['id']}/",
    ):
        response = mallory.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    cancelled = mallory.post(f"/api/v1/orders/{order['id']}/cancel")
    assert cancelled.status_code == 404
    assert alice.get(f"/api/v1/orders/{order['id']}/").json()["status"] == "confirmed"
    assert mallory.get(f"/api/v1/users/{order['user_id']}/").status_code == 404
    assert mallory.get(f"/api/v1/users/{mallory_account['id']}/").status_code == 200
    assert mallory.get("/api/v1/orders/").json()["count"] == 0


def test_orders_need_a_valid_token(anonymous: Client, customer: Any) -> None:
    assert anonymous.get("/api/v1/orders/").status_code == 401
    forged = Client(anonymous.base_url, token=customer[1]["access"][:-4] + "AAAA")
    response = forged.get("/api/v1/orders/")
    assert response.status_code == 401
    assert response.json()["error"]["code"]


def test_duplicate_signup_and_bad_credentials_are_clear_errors(anonymous: Client, customer: Any) -> None:
    _, account = customer
    duplicate = anonymous.post(
        "/api/v1/users/", json={"email": account["email"].upper(), "name": "Again", "password": PASSWORD}
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "email_taken"
    weak = anonymous.post("/api/v1/users/", json={"email": "weak@example.com", "name": "W", "password": "123"})
    assert weak.status_code == 400
    assert "password" in weak.json()["error"]["details"]
    wrong = anonymous.post("/api/v1/auth/token", json={"email": account["email"], "password": "not it"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_credentials"


def test_a_refresh_token_buys_a_working_access_token(customer: Any) -> None:
    client, account = customer

    refreshed = client.post("/api/v1/auth/refresh", json={"refresh": account["refresh"]})

    assert refreshed.status_code == 200, refreshed.text
    fresh = Client(client.base_url, token=refreshed.json()["access"])
    assert fresh.get("/api/v1/users/me/").json()["id"] == account["id"]


def test_order_pages_link_to_the_next_page_through_the_gateway(customer: Any) -> None:
    client, _ = customer
    product = client.get("/api/v1/products/").json()[0]
    placed = [
        client.post(
            "/api/v1/orders/",
            json={"items": [{"product_id": product["id"], "quantity": 1}], "payment_method": "tok_visa"},
        ).json()["id"]
        for _ in range(2)
    ]

    first_page = client.get("/api/v1/orders/?page_size=1").json()

    assert first_page["count"] == 2
    assert [order["id"] for order in first_page["results"]] == [placed[1]]  # newest first
    assert first_page["next"].startswith(client.base_url + "/api/v1/orders/")  # the gateway, not the service
    second_page = client.session.get(first_page["next"], headers={"Authorization": f"Bearer {client.token}"})
    assert [order["id"] for order in second_page.json()["results"]] == [placed[0]]


def test_concurrent_orders_are_all_placed_and_paid_once(gateway: str) -> None:
    # SQLite in embedded mode serialises writers: each must wait its turn, none may fail with "locked".
    client, _ = sign_up(gateway)
    product = client.get("/api/v1/products/").json()[0]
    body = {"items": [{"product_id": product["id"], "quantity": 1}], "payment_method": "tok_visa"}

    def place(_: int) -> requests.Response:
        return Client(gateway, token=client.token).post("/api/v1/orders/", json=body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(place, range(16)))

    assert [r.status_code for r in responses] == [201] * 16, [r.text for r in responses if r.status_code != 201]
    orders = [r.json() for r in responses]
    assert len({o["id"] for o in orders}) == 16
    assert len({o["payment"]["id"] for o in orders}) == 16
    assert client.get("/api/v1/orders/?page_size=100").json()["count"] == 16


def test_a_customer_cancels_a_paid_order_and_it_is_refunded_once(customer: Any, system: manage_all.System) -> None:
    client, account = customer
    product = client.get("/api/v1/products/").json()[0]
    order = client.post(
        "/api/v1/orders/",
        json={"items": [{"product_id": product["id"], "quantity": 1}], "payment_method": "tok_visa"},
    ).json()

    first = client.post(f"/api/v1/orders/{order['id']}/cancel")
    again = client.post(f"/api/v1/orders/{order['id']}/cancel")

    assert (first.status_code, again.status_code) == (200, 200), first.text
    assert first.json()["status"] == "cancelled"
    assert first.json()["cancellation_reason"] == "customer_cancelled"
    assert first.json()["payment"]["status"] == "refunded"
    assert client.get(f"/api/v1/payments/{order['payment']['id']}/").json()["status"] == "refunded"
    steps = [entry["event"] for entry in client.get(f"/api/v1/orders/{order['id']}/history").json()]
    assert steps == [
        "placed",
        "payment_requested",
        "confirmed",
        "refund_requested",
        "cancelled",
        "stock_released",
    ]
    cancellation = wait_for_mail(system.var_dir, account["email"], f"#{order['id']} is cancelled")
    assert "You cancelled it." in cancellation
    assert "We refunded the" in cancellation


def test_an_idempotency_key_replays_the_first_order_through_the_gateway(customer: Any) -> None:
    client, _ = customer
    product = client.get("/api/v1/products/").json()[0]
    body = {"items": [{"product_id": product["id"], "quantity": 1}], "payment_method": "tok_visa"}
    key = {"Idempotency-Key": f"journey-{uuid.uuid4()}"}

    first = client.post("/api/v1/orders/", json=body, headers=dict(key))
    again = client.post("/api/v1/orders/", json=body, headers=dict(key))
    other = client.post("/api/v1/orders/", json={**body, "payment_method": "tok_amex"}, headers=dict(key))

    assert (first.status_code, again.status_code) == (201, 201), first.text
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert client.get("/api/v1/orders/").json()["count"] == 1


def test_with_the_payment_service_down_an_order_is_accepted_and_completes_once_it_is_back(
    customer: Any, system: manage_all.System
) -> None:
    # Runs last: it stops the payment service for a while, and starts it again before it ends.
    client, account = customer
    product = client.get("/api/v1/products/").json()[0]
    payments = manage_all.SERVICES_BY_NAME["payments"]
    [process] = [p for p in system.processes if p.name == "payments"]
    manage_all.stop_processes([(process.name, process.popen.pid)], timeout=15)
    system.processes.remove(process)
    try:
        response = client.post(
            "/api/v1/orders/",
            json={"items": [{"product_id": product["id"], "quantity": 1}], "payment_method": "tok_visa"},
        )
        assert response.status_code == 202, response.text
        order = response.json()
        assert order["status"] == "payment_pending"
        assert response.headers["Location"] == f"/api/v1/orders/{order['id']}/"
    finally:
        system._spawn("payments", payments, system.web_command(payments), system.var_dir / "log")
        system.wait_healthy(timeout=60)

    # The order saga's sweeper charges it once the payment service is back
    deadline = time.monotonic() + 60
    while (status := client.get(f"/api/v1/orders/{order['id']}/").json()["status"]) == "payment_pending":
        assert time.monotonic() < deadline, "the order stayed payment_pending"
        time.sleep(0.5)
    assert status == "confirmed"
    wait_for_mail(system.var_dir, account["email"], f"#{order['id']}")
