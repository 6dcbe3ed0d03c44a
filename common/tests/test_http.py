"""The service client against real HTTP servers on loopback: what it sends, when it tries again and on which
instance, its circuit breaker, and the clients service_client wires to the settings."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import requests
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from common.balancing import Balancer, StaticInstances
from common.breakers import Breaker, SharedStates
from common.errors import UpstreamTimeout, UpstreamUnavailable
from common.http import RequestDeadlineMiddleware, ServiceClient, call_deadline, service_client, tracked_clients
from common.internal_auth import Principal, verify_assertion
from common.request_id import reset_request_id, set_request_id
from common.testing import unanswered_port
from tests.loopback import HangUpServer, LoopbackServer, Reply, closed_port, loopback_server

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


# several instances, the breaker ------------------------------------------------------------------------


def balanced_client(
    *urls: str, policy: str = "round_robin", connect_timeout: float = 1.0, **options: Any
) -> ServiceClient:
    return ServiceClient(
        base_url=urls[0],
        caller="orders",
        audience="users",
        secret=SECRET,
        connect_timeout=connect_timeout,
        read_timeout=1.0,
        balancer=Balancer("users", StaticInstances(urls), policy),
        **options,
    )


def test_calls_are_spread_over_the_instances_and_one_refusing_connections_fails_none() -> None:
    with loopback_server() as first, loopback_server() as second:
        dead = f"http://127.0.0.1:{closed_port()}"
        client = balanced_client(first.url, second.url, dead, policy="least_outstanding")

        for _ in range(9):
            assert client.request("GET", "/ping").status_code == 200  # the dead one's call is retried elsewhere

        assert len(first.requests_to("/ping")) >= 4
        assert len(second.requests_to("/ping")) >= 4
        [ejected] = [i for i in client.balancer.status() if i["status"] == "ejected"]
        assert (ejected["url"], ejected["reason"]) == (dead, "unreachable")
        assert client.breaker.state == "closed"  # the successes in between keep it closed


def test_a_post_refused_by_one_instance_is_sent_to_another_since_nothing_was_sent(server: LoopbackServer) -> None:
    server.answer(Reply(201, {"id": 1}))
    dead = f"http://127.0.0.1:{closed_port()}"
    client = balanced_client(dead, server.url)

    assert client.request("POST", "/api/v1/payments/", json={}).status_code == 201
    assert len(server.received) == 1


def test_a_post_whose_connection_breaks_after_sending_is_not_retried() -> None:
    with HangUpServer() as hang_up:
        with pytest.raises(UpstreamUnavailable) as raised:
            balanced_client(hang_up.url).request("POST", "/api/v1/payments/", json={})
        assert raised.value.details == {"service": "users"}
        assert hang_up.requests == 1  # the charge may have happened: never sent twice

        with pytest.raises(UpstreamUnavailable):
            balanced_client(hang_up.url).request("GET", "/api/v1/payments/1/")
        assert hang_up.requests == 1 + 3  # an idempotent read is tried again
        client = balanced_client(hang_up.url)
        with pytest.raises(UpstreamUnavailable):
            client.request("POST", "/x/")
        assert client.balancer.status()[0]["status"] == "healthy"  # it accepted the connection: not ejected


def test_a_connect_timeout_ejects_the_instance_and_a_post_goes_to_another(server: LoopbackServer) -> None:
    with unanswered_port() as port:
        silent = f"http://127.0.0.1:{port}"
        client = balanced_client(silent, server.url, connect_timeout=0.2)

        assert client.request("POST", "/a").status_code == 200  # nothing was sent to the silent one

        assert client.balancer.status()[0] == {
            "url": silent, "status": "ejected", "reason": "connect timeout", "outstanding": 0
        }  # fmt: skip
        with pytest.raises(UpstreamTimeout) as raised:
            balanced_client(silent, connect_timeout=0.2).request("POST", "/a")
        assert raised.value.details == {"service": "users"}


def test_a_get_answered_503_by_one_instance_is_retried_on_the_other() -> None:
    with loopback_server() as failing, loopback_server() as working:
        failing.answer(Reply(503))
        client = balanced_client(failing.url, working.url)

        for _ in range(2):
            assert client.request("GET", "/ping").status_code == 200

        assert len(working.requests_to("/ping")) == 2
        assert len(failing.requests_to("/ping")) <= 2


def test_the_breaker_opens_after_consecutive_failures_and_a_half_open_probe_closes_it(server: LoopbackServer) -> None:
    breaker = Breaker("users", failures=2, reset_timeout=0.3)
    client = balanced_client(server.url, retries=0, breaker=breaker)
    server.answer(Reply(500))
    client.request("GET", "/a")
    client.request("GET", "/a")
    assert breaker.state == "open"

    with pytest.raises(UpstreamUnavailable) as refused:
        client.request("GET", "/a")
    assert refused.value.details == {"service": "users", "breaker": "open"}
    assert len(server.requests_to("/a")) == 2  # refused without a call

    time.sleep(0.35)
    server.answer(Reply(200))
    assert client.request("GET", "/a").status_code == 200  # the half-open probe
    assert breaker.state == "closed"


def test_a_call_feeds_the_breaker_once_with_its_outcome_after_the_retries(server: LoopbackServer) -> None:
    client = balanced_client(
        f"http://127.0.0.1:{closed_port()}", breaker=Breaker("users", failures=2, reset_timeout=10)
    )
    with pytest.raises(UpstreamUnavailable):
        client.request("GET", "/a")  # three attempts, one failed call
    assert client.breaker.state == "closed"
    with pytest.raises(UpstreamUnavailable):
        client.request("GET", "/a")
    assert client.breaker.state == "open"

    # a dead instance whose call succeeds on a retry elsewhere is the balancer's business only
    healthy = balanced_client(
        f"http://127.0.0.1:{closed_port()}", server.url, breaker=Breaker("users", failures=1, reset_timeout=10)
    )
    assert healthy.request("POST", "/a").status_code == 200
    assert healthy.breaker.state == "closed"


# service_client: the calling service's settings ---------------------------------------------------------


@pytest.fixture
def client_settings(settings: Any) -> Any:
    settings.DISCOVERY_BACKEND = "static"
    settings.SERVICE_CHECK_INTERVAL = 0.0
    settings.SERVICE_BREAKER_REDIS_URL = ""
    return settings


def test_service_client_takes_its_instances_and_thresholds_from_the_settings(
    client_settings: Any, server: LoopbackServer
) -> None:
    client_settings.SERVICE_BREAKER_FAILURES, client_settings.SERVICE_BREAKER_RESET_SECONDS = 4, 7.0
    client_settings.SERVICE_CONNECT_TIMEOUT, client_settings.SERVICE_READ_TIMEOUT = 0.5, 3.0
    client_settings.SERVICE_LOAD_BALANCER_POLICY = "random"
    dead = f"http://127.0.0.1:{closed_port()}"

    client = service_client(audience="users", base_url=f"{server.url}, {dead}")

    assert [i.url for i in client.balancer.instances] == [server.url, dead]
    assert client.balancer.policy == "random"
    assert (client.breaker.max_failures, client.breaker.reset_timeout) == (4, 7.0)
    assert client.timeout == (0.5, 3.0)
    assert client.caller == "test"
    assert tracked_clients() == [client]
    assert client.request("GET", "/ping").status_code == 200


def test_service_client_thresholds_may_change_at_runtime(client_settings: Any) -> None:
    current = {"failures": 5}
    client = service_client(
        audience="users", base_url=f"http://127.0.0.1:{closed_port()}", failures=lambda: current["failures"]
    )
    current["failures"] = 1  # the breaker that exists takes it, no new client needed

    with pytest.raises(UpstreamUnavailable):
        client.request("POST", "/a")
    assert client.breaker.state == "open"


def test_service_client_checks_its_instances_and_readmits_one_that_passes_again(
    client_settings: Any, server: LoopbackServer
) -> None:
    client_settings.SERVICE_CHECK_INTERVAL, client_settings.SERVICE_CHECK_TIMEOUT = 0.1, 0.5
    with loopback_server() as other:
        client = service_client(audience="users", base_url=f"{server.url},{other.url}")
        server.answer(Reply(503))  # its /health/ fails
        deadline = time.monotonic() + 5
        while client.balancer.status()[0]["status"] != "ejected":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        server.answer(Reply(200))
        while client.balancer.status()[0]["status"] != "healthy":
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_service_client_breakers_share_their_state_through_redis(client_settings: Any, redis_url: str) -> None:
    client_settings.SERVICE_BREAKER_REDIS_URL = redis_url
    client_settings.SERVICE_BREAKER_REDIS_PREFIX = prefix = f"test-breaker-{uuid.uuid4().hex}"
    client_settings.SERVICE_BREAKER_SYNC_INTERVAL = 0.05
    client = service_client(audience="users", base_url=f"http://127.0.0.1:{closed_port()}", failures=1)

    with pytest.raises(UpstreamUnavailable):
        client.request("POST", "/a")

    # another process of this service sees it open
    other_process = SharedStates(redis_url, prefix)
    assert other_process.read(["users"])["users"][0] == "open"
    # and this one adopts what another process writes
    other_process.publish("users", "closed", time.time() + 1)
    deadline = time.monotonic() + 5
    while client.breaker.state != "closed":
        assert time.monotonic() < deadline
        time.sleep(0.02)


# --- a request's deadline ---------------------------------------------------------------------------------


def test_calls_within_a_deadline_end_by_it_even_when_timeouts_and_retries_would_take_longer(
    server: LoopbackServer,
) -> None:
    server.answer(Reply(200, delay=3.0))
    client = client_for(server.url, read_timeout=2.0)  # a GET: 3 attempts of 2 s without a deadline

    started = time.monotonic()
    with call_deadline(0.5), pytest.raises(UpstreamTimeout):
        client.request("GET", "/api/v1/payments/3/")

    assert time.monotonic() - started < 1.0
    assert len(server.received) == 1  # no retry could have ended in time


def test_no_call_is_sent_once_the_deadline_has_passed(server: LoopbackServer) -> None:
    with call_deadline(0.05):
        time.sleep(0.1)
        with pytest.raises(UpstreamTimeout) as raised:
            client_for(server.url).request("GET", "/api/v1/payments/3/")

    assert raised.value.details == {"service": "payments", "reason": "deadline"}
    assert server.received == []


def test_a_retry_that_fits_in_the_deadline_is_still_made(server: LoopbackServer) -> None:
    server.answer(Reply(503), Reply(200, {"id": 3}))

    with call_deadline(5.0):
        response = client_for(server.url).request("GET", "/api/v1/payments/3/")

    assert response.status_code == 200
    assert len(server.received) == 2


def test_an_inner_deadline_never_extends_the_one_in_force(server: LoopbackServer) -> None:
    server.answer(Reply(200, delay=3.0))
    started = time.monotonic()

    with call_deadline(0.3), call_deadline(30), pytest.raises(UpstreamTimeout):
        client_for(server.url).request("GET", "/api/v1/payments/3/")

    assert time.monotonic() - started < 1.0


def test_the_middleware_gives_each_request_its_deadline(server: LoopbackServer, settings: Any) -> None:
    settings.SERVICE_REQUEST_DEADLINE = 0.4
    server.answer(Reply(200, delay=3.0))
    client = client_for(server.url)
    outcomes: list[str] = []

    def view(request: HttpRequest) -> HttpResponse:
        try:
            client.request("GET", "/api/v1/payments/3/")
        except UpstreamTimeout as exc:
            outcomes.append(exc.code)
        return HttpResponse()

    started = time.monotonic()
    RequestDeadlineMiddleware(view)(RequestFactory().get("/"))

    assert outcomes == ["upstream_timeout"]
    assert time.monotonic() - started < 1.0
    # Outside a request, the client's own timeouts alone apply again.
    server.answer(Reply(200, {"id": 3}))
    assert client.request("GET", "/api/v1/payments/3/").status_code == 200
