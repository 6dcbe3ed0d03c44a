"""Retries, the retry budget, timeouts and deadlines, stale copies and the breaker's store, through the
real view and middleware (Django's test client) against real upstream servers on loopback."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
from django.test import Client

from common.testing import unanswered_port
from proxy import breakers, routes
from proxy.retries import RetryBudget
from proxy.tests.upstream_stub import StubUpstream
from proxy.tests.utils import body_of, closed_port_url, json_of

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_active_checks(settings: Any) -> None:
    """Only the calls made by each test judge the instances here (test_balancing_processes.py tests the
    active checks)."""
    settings.UPSTREAM_CHECK_INTERVAL = 0


def with_route_policy(monkeypatch: pytest.MonkeyPatch, prefix: str, **policy: Any) -> None:
    """The route table with one route's upstream policy changed, as a deployment would write it."""
    table = tuple(
        dataclasses.replace(route, upstream=dataclasses.replace(route.upstream, **policy))
        if route.prefix == prefix
        else route
        for route in routes.ROUTES
    )
    monkeypatch.setattr(routes, "ROUTES", table)


# Retries


def test_a_post_is_never_retried(client: Client, orders: StubUpstream, bearer: dict[str, str]) -> None:
    orders.reply("/api/v1/orders/", status=503)

    response = client.post("/api/v1/orders/", b"{}", content_type="application/json", headers=bearer)

    assert response.status_code == 503  # the service's own answer, passed through
    assert [request.method for request in orders.received] == ["POST"]


def test_a_post_with_an_idempotency_key_is_retried_where_the_service_honours_the_key(
    client: Client, orders: StubUpstream, bearer: dict[str, str]
) -> None:
    orders.reply("/api/v1/orders/", status=503)

    response = client.post(
        "/api/v1/orders/", b"{}", content_type="application/json", headers={**bearer, "Idempotency-Key": "k-1"}
    )

    assert response.status_code == 503
    assert len(orders.received) == 3  # the first attempt and the route's two retries
    assert {request.headers["Idempotency-Key"] for request in orders.received} == {"k-1"}


def test_a_post_read_timeout_is_retried_where_the_service_honours_the_key(
    client: Client, orders: StubUpstream, bearer: dict[str, str], settings: Any
) -> None:
    settings.UPSTREAM_READ_TIMEOUT = 0.2
    orders.reply("/api/v1/orders/", delay=1.0)

    response = client.post(
        "/api/v1/orders/", b"{}", content_type="application/json", headers={**bearer, "Idempotency-Key": "k-2"}
    )

    assert response.status_code == 504
    assert len(orders.received) == 3


@pytest.mark.parametrize("failure", ["503", "read timeout"])
@pytest.mark.parametrize("path", ["/api/v1/auth/refresh", "/api/v1/auth/token", "/api/v1/users/"])
def test_a_post_with_an_idempotency_key_is_not_retried_where_the_service_ignores_the_key(
    client: Client, users: StubUpstream, settings: Any, path: str, failure: str
) -> None:
    # given a user service that fails, and which stores no idempotency keys: a replayed refresh would spend
    # a spent refresh token (revoking the user's whole sign-in), a replayed sign-in count a failure twice
    settings.UPSTREAM_READ_TIMEOUT = 0.2
    if failure == "503":
        users.reply(path, status=503)
    else:
        users.reply(path, delay=1.0)

    # when
    response = client.post(path, b"{}", content_type="application/json", headers={"Idempotency-Key": "k-3"})

    # then the service saw it once
    assert response.status_code == (503 if failure == "503" else 504)
    assert [request.target for request in users.received] == [path]


def test_only_the_order_list_honours_idempotency_keys() -> None:
    # README, Idempotency keys: POST /api/v1/orders/ (and the payment service's internal charge endpoint)
    honouring = {route.prefix for route in routes.ROUTES if route.upstream.honours_idempotency_key}

    assert honouring == {"/api/v1/orders/"}


def test_a_get_refused_by_one_instance_is_retried_on_another(
    client: Client, orders: StubUpstream, settings: Any
) -> None:
    # given a stopped instance first in turn
    settings.LOAD_BALANCER_POLICY = "round_robin"
    dead = closed_port_url()
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": f"{dead},{orders.url}"}

    # when
    response = client.get("/api/v1/products/7/")

    # then
    assert response.status_code == 200
    assert json_of(response)["service"] == "orders"
    assert [request.target for request in orders.received] == ["/api/v1/products/7/"]
    instances = json_of(client.get("/health"))["upstreams"]["services"]["orders"]["instances"]
    assert instances[0] == {"url": dead, "status": "ejected", "reason": "NewConnectionError", "outstanding": 0}
    assert instances[1]["status"] == "healthy"


def test_the_retry_budget_caps_retries_during_an_outage(client: Client, users: StubUpstream, settings: Any) -> None:
    # given a service that fails everything, a budget of 20 % of requests and a breaker that stays closed
    settings.RETRY_BUDGET_RATIO = 0.2
    settings.RETRY_BUDGET_MIN = 0
    settings.BREAKER_FAILURES = 1000
    users.reply("/api/v1/users/", status=503)

    # when 20 GETs arrive, each of which could be tried three times
    statuses = [client.get("/api/v1/users/1/").status_code for _ in range(20)]

    # then the service saw 20 requests plus at most 20 % more, not 60
    assert statuses == [503] * 20
    retried = len(users.received) - 20
    assert 1 <= retried <= 4


def test_the_retry_budget_slides_with_time() -> None:
    budget = RetryBudget(ratio=0.5, minimum=0, window=0.2)
    for _ in range(4):
        budget.record_request()
    assert [budget.try_retry() for _ in range(3)] == [True, True, False]

    time.sleep(0.25)  # the window has passed: old requests and retries no longer count
    budget.record_request()
    assert budget.try_retry() is False  # 1 retry for 1 request would be 100 %
    budget.record_request()
    assert budget.try_retry() is True


# Timeouts and the deadline


def test_each_route_has_its_own_read_timeout(
    client: Client, users: StubUpstream, orders: StubUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a route that waits 0.3 s per attempt, while the default (UPSTREAM_READ_TIMEOUT) is 2 s
    with_route_policy(monkeypatch, "/api/v1/users/", read_timeout=0.3, retries=0)
    users.reply("/api/v1/users/", delay=1.0)
    orders.reply("/api/v1/products/", delay=0.5)

    # when
    slow_users = client.get("/api/v1/users/1/")
    slow_products = client.get("/api/v1/products/")

    # then (the default 2 s would have waited for the answer, sent after 1 s, and passed it on)
    assert slow_users.status_code == 504
    assert json_of(slow_users)["error"] == {
        "code": "upstream_timeout",
        "message": "A service this request depends on did not answer in time.",
        "details": {"service": "users"},
    }
    assert slow_products.status_code == 200


def test_the_overall_deadline_bounds_all_attempts_together(
    client: Client, users: StubUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given attempts of up to 2 s each, three of them, within a deadline of 0.6 s
    with_route_policy(monkeypatch, "/api/v1/users/", read_timeout=2.0, retries=2, deadline=0.6)
    users.reply("/api/v1/users/", delay=3.0)

    started = time.perf_counter()
    response = client.get("/api/v1/users/1/")
    elapsed = time.perf_counter() - started

    assert response.status_code == 504
    assert json_of(response)["error"]["code"] == "upstream_timeout"
    assert json_of(response)["error"]["details"] == {"service": "users", "reason": "deadline"}
    assert 0.55 < elapsed < 2.0  # one attempt's read timeout (2 s) was cut short by the deadline
    assert len(users.received) == 1  # nothing was left for a retry


def test_a_connect_timeout_per_route(client: Client, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # given an instance that never completes a connection: a listener whose backlog is full drops SYNs
    with unanswered_port() as port:
        with_route_policy(monkeypatch, "/api/v1/users/", connect_timeout=0.2, retries=0)
        settings.UPSTREAMS = {**settings.UPSTREAMS, "users": f"http://127.0.0.1:{port}"}

        # when
        started = time.perf_counter()
        response = client.get("/api/v1/users/1/")
        elapsed = time.perf_counter() - started

    # then: nothing reached the service, and the route's 0.2 s (not the 2 s default) was waited
    assert response.status_code == 503
    assert json_of(response)["error"]["code"] == "upstream_unavailable"
    assert elapsed < 1.5


# Stale copies


def test_the_catalog_is_served_from_a_stale_copy_while_its_service_is_down(
    client: Client, orders: StubUpstream, settings: Any
) -> None:
    # given an earlier answer, read to its end
    orders.reply("/api/v1/products/", body=b'{"results": ["mug"]}', headers=[("Content-Type", "application/json")])
    fresh = client.get("/api/v1/products/?page=2")
    assert body_of(fresh) == b'{"results": ["mug"]}'
    assert "X-Cache" not in fresh

    # when the service is down
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": closed_port_url()}
    response = client.get("/api/v1/products/?page=2")

    # then the copy answers, marked stale
    assert response.status_code == 200
    assert body_of(response) == b'{"results": ["mug"]}'
    assert response["Content-Type"] == "application/json"
    assert response["X-Cache"] == "stale"
    assert response["Warning"] == '110 - "Response is Stale"'
    assert int(response["Age"]) >= 0

    # and a path never seen still gets the 503
    assert client.get("/api/v1/products/?page=3").status_code == 503


def test_the_stale_copy_answers_while_the_breaker_is_open(client: Client, orders: StubUpstream, settings: Any) -> None:
    settings.BREAKER_FAILURES = 1
    body_of(client.get("/api/v1/products/1/"))
    orders.reply("/api/v1/products/", status=500)
    assert client.get("/api/v1/products/2/").status_code == 500  # opens the breaker
    orders.received.clear()

    response = client.get("/api/v1/products/1/")

    assert response.status_code == 200
    assert response["X-Cache"] == "stale"
    assert orders.received == []
    assert breakers.states()["orders"] == "open"


def test_answers_to_signed_in_callers_are_never_kept(
    client: Client, orders: StubUpstream, bearer: dict[str, str], settings: Any
) -> None:
    body_of(client.get("/api/v1/products/1/", headers=bearer))
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": closed_port_url()}

    assert client.get("/api/v1/products/1/").status_code == 503


def test_a_route_without_fallback_gets_the_503(client: Client, users: StubUpstream, settings: Any) -> None:
    body_of(client.get("/api/v1/users/1/"))
    settings.UPSTREAMS = {**settings.UPSTREAMS, "users": closed_port_url()}

    assert client.get("/api/v1/users/1/").status_code == 503


# The breaker


def test_half_open_lets_a_bounded_number_of_probes_through(client: Client, users: StubUpstream, settings: Any) -> None:
    # given an open breaker whose cool-down is over, with room for one probe at a time
    settings.BREAKER_FAILURES = 1
    settings.BREAKER_RESET_TIMEOUT = 0.3
    settings.BREAKER_HALF_OPEN_PROBES = 1
    users.reply("/api/v1/users/", status=500)
    assert client.get("/api/v1/users/1/").status_code == 500
    users.reply("/api/v1/users/", delay=1.0)
    time.sleep(0.35)
    assert breakers.states()["users"] == "half_open"

    # when a slow probe is in flight
    probe: dict[str, int] = {}
    prober = threading.Thread(target=lambda: probe.update(status=Client().get("/api/v1/users/1/").status_code))
    prober.start()
    wait_until_received(users, 2)
    refused = client.get("/api/v1/users/1/")
    prober.join()

    # then another call is refused at once, and the probe's success closes the breaker
    assert refused.status_code == 503
    assert json_of(refused)["error"]["details"] == {"service": "users", "reason": "circuit_open"}
    assert refused["Retry-After"] == "1"
    assert probe == {"status": 200}
    assert breakers.states()["users"] == "closed"
    assert len(users.received) == 2


def wait_until_received(stub: StubUpstream, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(stub.received) < count:
        assert time.monotonic() < deadline
        time.sleep(0.01)


# The breaker's shared store


def test_an_unreachable_breaker_store_never_fails_a_request(client: Client, users: StubUpstream, settings: Any) -> None:
    # given REDIS_URL pointing at nothing
    settings.BREAKER_REDIS_URL = closed_port_url().replace("http", "redis") + "/0"
    settings.BREAKER_FAILURES = 2

    # then requests go through, and the breaker still works on its local state
    assert client.get("/api/v1/users/1/").status_code == 200
    users.reply("/api/v1/users/", status=500)
    assert [client.get("/api/v1/users/1/").status_code for _ in range(3)] == [500, 500, 503]
    health = json_of(client.get("/health"))["upstreams"]
    assert health["breakers"] == {"store": "redis", "status": "unavailable"}
    assert health["services"]["users"]["breaker"] == "open"


def test_health_shows_each_breaker_and_instance(client: Client, stubs: dict[str, StubUpstream], settings: Any) -> None:
    upstreams = json_of(client.get("/health"))["upstreams"]

    shared = settings.BREAKER_REDIS_URL  # set in real mode
    assert upstreams["breakers"] == ({"store": "redis", "status": "ok"} if shared else {"store": "local"})
    assert upstreams["services"]["orders"] == {
        "breaker": "closed",
        "instances": [{"url": stubs["orders"].url, "status": "healthy", "outstanding": 0}],
    }
    assert breakers.states() == {"users": "closed", "orders": "closed", "payments": "closed"}
