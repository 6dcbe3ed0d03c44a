"""The service client against a real HTTP server on loopback: what it sends, and when it tries again."""

from __future__ import annotations

import json
import time

import pytest
import requests

from common.errors import UpstreamTimeout, UpstreamUnavailable
from common.http import ServiceClient
from common.internal_auth import Principal, verify_assertion
from common.request_id import reset_request_id, set_request_id
from tests.loopback import LoopbackServer, Reply, closed_port

SECRET = "the-internal-secret-the-services-share-0123456789"


def client_for(base_url: str, *, read_timeout: float = 2.0) -> ServiceClient:
    return ServiceClient(
        base_url=base_url,
        caller="orders",
        audience="payments",
        secret=SECRET,
        connect_timeout=1.0,
        read_timeout=read_timeout,
    )


def test_call_carries_the_request_id_and_an_assertion_for_the_target_acting_for_the_user(
    server: LoopbackServer,
) -> None:
    server.answer(Reply(201, {"id": 501}))
    token = set_request_id("req-12345678")
    try:
        response = client_for(server.url + "/").request(
            "POST",
            "/api/v1/payments/",
            acting_for=Principal(id=7, is_staff=False, caller="gateway"),
            json={"order_id": 3},
            params={"expand": "order"},
        )
    finally:
        reset_request_id(token)

    assert (response.status_code, response.json()) == (201, {"id": 501})
    [received] = server.received
    assert (received.method, received.path) == ("POST", "/api/v1/payments/?expand=order")
    assert received.headers["x-request-id"] == "req-12345678"
    assert received.headers["accept"] == "application/json"
    assert json.loads(received.body) == {"order_id": 3}
    principal = verify_assertion(received.headers["x-service-assertion"], audience="payments", secret=SECRET)
    assert principal == Principal(id=7, is_staff=False, caller="orders")


def test_call_outside_a_request_gets_a_fresh_request_id_and_acts_for_nobody(server: LoopbackServer) -> None:
    client_for(server.url).request("GET", "/api/v1/payments/3/")

    [received] = server.received
    assert len(received.headers["x-request-id"]) == 32
    principal = verify_assertion(received.headers["x-service-assertion"], audience="payments", secret=SECRET)
    assert principal == Principal(id=None, is_staff=False, caller="orders")


def test_staff_user_is_asserted_as_staff(server: LoopbackServer) -> None:
    client_for(server.url).request("GET", "/x/", acting_for=Principal(id=1, is_staff=True, caller="gateway"))

    principal = verify_assertion(server.received[0].headers["x-service-assertion"], audience="payments", secret=SECRET)
    assert principal.is_staff is True


def test_get_is_retried_on_503_until_it_succeeds(server: LoopbackServer) -> None:
    server.answer(Reply(503), Reply(503), Reply(200, {"ok": True}))

    response = client_for(server.url).request("GET", "/api/v1/payments/3/")

    assert response.status_code == 200
    assert len(server.requests_to("/api/v1/payments/3/")) == 3


def test_get_gives_up_after_the_retries_and_returns_the_last_answer(server: LoopbackServer) -> None:
    server.answer(Reply(503, {"error": "down"}))

    response = client_for(server.url).request("GET", "/api/v1/payments/3/")

    assert response.status_code == 503
    assert len(server.received) == 3  # the first attempt and two retries


def test_post_is_not_retried_on_503(server: LoopbackServer) -> None:
    server.answer(Reply(503), Reply(201))

    response = client_for(server.url).request("POST", "/api/v1/payments/", json={"order_id": 3})

    assert response.status_code == 503
    assert len(server.received) == 1  # a charge is never sent twice


def test_post_is_not_retried_on_a_read_timeout(server: LoopbackServer) -> None:
    server.answer(Reply(201, delay=2.0))

    with pytest.raises(UpstreamTimeout) as raised:
        client_for(server.url, read_timeout=0.2).request("POST", "/api/v1/payments/", json={"order_id": 3})

    assert raised.value.details == {"service": "payments"}
    time.sleep(0.1)  # a retry, had there been one, would be on its way now
    assert len(server.received) == 1


def test_get_read_timeout_is_an_upstream_timeout_after_its_retries(server: LoopbackServer) -> None:
    server.answer(Reply(200, delay=2.0))

    with pytest.raises(UpstreamTimeout) as raised:
        client_for(server.url, read_timeout=0.2).request("GET", "/api/v1/payments/3/")

    assert raised.value.status_code == 504
    assert len(server.received) == 3


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_connection_refused_is_upstream_unavailable(method: str) -> None:
    client = client_for(f"http://127.0.0.1:{closed_port()}")

    with pytest.raises(UpstreamUnavailable) as raised:
        client.request(method, "/api/v1/payments/")

    assert raised.value.status_code == 503
    assert raised.value.details == {"service": "payments"}


def test_redirects_are_not_followed(server: LoopbackServer) -> None:
    server.answer(Reply(302))

    assert client_for(server.url).request("GET", "/old/").status_code == 302
    assert len(server.received) == 1


def test_proxy_settings_in_the_environment_are_ignored(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the environment names a proxy that does not exist
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    bogus_proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, bogus_proxy)
    with pytest.raises(requests.ConnectionError):  # (a client that reads it does fail)
        requests.get(server.url, timeout=1)

    # Then the service client still reaches the service directly
    response = client_for(server.url).request("GET", "/api/v1/payments/3/")

    assert response.status_code == 200
    assert len(server.received) == 1
