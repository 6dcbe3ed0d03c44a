"""Several instances, health, ejection and the circuit breaker, end to end: a real gunicorn gateway in
front of real upstream servers that are stopped and started again."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.tests.gateway_process import (
    GatewayProcess,
    RestartableStub,
    StaticUpstreamProcess,
    gateway_process,
    wait_until,
)
from proxy.tests.upstream_stub import StubUpstream


@pytest.fixture
def instances() -> Iterator[tuple[RestartableStub, RestartableStub]]:
    first, second = RestartableStub("orders-a"), RestartableStub("orders-b")
    for stub in (first, second):
        stub.reset()
    yield first, second
    for stub in (first, second):
        stub.stop()


def upstreams_with(stubs: dict[str, StubUpstream], **overrides: str) -> dict[str, str]:
    return {**{name: stub.url for name, stub in stubs.items()}, **overrides}


def instance_status(gateway: GatewayProcess, service: str) -> dict[str, str]:
    instances = gateway.health()["upstreams"]["services"][service]["instances"]
    return {instance["url"]: instance["status"] for instance in instances}


def breaker_state(gateway: GatewayProcess, service: str) -> str:
    return gateway.health()["upstreams"]["services"][service]["breaker"]


# /health answers with the worker's document of the last second (proxy/views.py HealthDocument): a change
# shows there within about a second, so a test reading it again soon after waits for it.
SHOWN_WITHIN = 3.0


def get_products(gateway: GatewayProcess, times: int) -> list[int]:
    return [gateway.request("GET", "/api/v1/products/")[0] for _ in range(times)]


def test_traffic_reaches_every_instance_and_one_that_stops_is_ejected_on_its_first_refusal(
    tmp_path: Path, stubs: dict[str, StubUpstream], instances: tuple[RestartableStub, RestartableStub]
) -> None:
    first, second = instances
    upstreams = upstreams_with(stubs, orders=f"{first.url},{second.url}")
    settings = {"LOAD_BALANCER_POLICY": "round_robin", "UPSTREAM_CHECK_INTERVAL": "0", "UPSTREAM_EJECT_SECONDS": "5"}
    with gateway_process(tmp_path, upstreams, **settings) as gateway:
        # given both instances up: round-robin alternates
        assert get_products(gateway, 10) == [200] * 10
        assert (len(first.received), len(second.received)) == (5, 5)

        # when the second stops (no active checks here: only real calls can notice)
        second.stop()
        statuses = get_products(gateway, 10)

        # then every GET is answered (the one that met the refusal went on to the first instance), and the
        # second is ejected: the first got all ten
        assert statuses == [200] * 10
        assert len(first.received) == 15
        assert instance_status(gateway, "orders") == {first.url: "healthy", second.url: "ejected"}
        assert gateway.log().count(f"instance {second.url} ejected") == 1

        # when it is back and its cool-down is over, it is readmitted
        second.start_again()
        wait_until(lambda: instance_status(gateway, "orders")[second.url] == "healthy", timeout=15)
        get_products(gateway, 4)
        assert len(second.received) == 5 + 2


def test_active_checks_eject_an_instance_that_fails_them_and_readmit_it_when_it_passes(
    tmp_path: Path, stubs: dict[str, StubUpstream], instances: tuple[RestartableStub, RestartableStub]
) -> None:
    first, second = instances
    upstreams = upstreams_with(stubs, orders=f"{first.url},{second.url}")
    settings = {"UPSTREAM_CHECK_INTERVAL": "0.2", "UPSTREAM_CHECK_TIMEOUT": "0.5", "UPSTREAM_EJECT_SECONDS": "60"}
    with gateway_process(tmp_path, upstreams, **settings) as gateway:
        assert get_products(gateway, 6) == [200] * 6
        assert second.received

        # when the second instance's own health check fails (it would still answer requests)
        second.health = (503, {"database": "unavailable"})
        wait_until(lambda: instance_status(gateway, "orders")[second.url] == "ejected", timeout=15)
        second.received.clear()

        # then it gets no traffic
        assert get_products(gateway, 10) == [200] * 10
        assert second.received == []

        # when it passes again, it is readmitted and gets traffic
        second.health = (200, {"database": "ok"})
        wait_until(lambda: instance_status(gateway, "orders")[second.url] == "healthy", timeout=15)
        get_products(gateway, 10)
        assert second.received

        # a stopped instance is ejected by the checks alone, and readmitted once restarted
        second.stop()
        wait_until(lambda: instance_status(gateway, "orders")[second.url] == "ejected", timeout=15)
        assert gateway.health()["upstreams"]["services"]["orders"]["instances"][1]["reason"] == "unreachable"
        assert get_products(gateway, 6) == [200] * 6
        second.received.clear()
        second.start_again()
        wait_until(lambda: instance_status(gateway, "orders")[second.url] == "healthy", timeout=15)
        get_products(gateway, 10)
        assert second.received


@pytest.fixture
def users_process(tmp_path: Path) -> Iterator[StaticUpstreamProcess]:
    upstream = StaticUpstreamProcess(tmp_path / "users-root", ["/api/v1/users/1/"])
    upstream.start()
    yield upstream
    upstream.stop()


def test_the_breaker_opens_answers_fast_then_half_opens_and_closes_against_a_restarted_service(
    tmp_path: Path, stubs: dict[str, StubUpstream], users_process: StaticUpstreamProcess
) -> None:
    upstreams = upstreams_with(stubs, users=users_process.url)
    settings = {"BREAKER_FAILURES": "3", "BREAKER_RESET_TIMEOUT": "3", "UPSTREAM_CHECK_INTERVAL": "0"}
    with gateway_process(tmp_path, upstreams, **settings) as gateway:
        assert gateway.request("GET", "/api/v1/users/1/")[0] == 200
        assert breaker_state(gateway, "users") == "closed"

        # when the service's process stops: three refused attempts (a GET is retried) open the breaker
        users_process.stop()
        status, _, body = gateway.request("GET", "/api/v1/users/1/")
        assert status == 503
        assert json.loads(body)["error"]["code"] == "upstream_unavailable"
        wait_until(lambda: breaker_state(gateway, "users") == "open", timeout=SHOWN_WITHIN)

        # then, while open, the gateway answers at once, without trying the service
        started = time.perf_counter()
        status, headers, body = gateway.request("GET", "/api/v1/users/1/")
        elapsed = time.perf_counter() - started
        assert status == 503
        error = json.loads(body)["error"]
        assert error.pop("request_id") == headers["X-Request-ID"]
        assert len(error.pop("trace_id")) == 32
        assert error == {
            "code": "upstream_unavailable",
            "message": "A service this request depends on is unavailable.",
            "details": {"service": "users", "reason": "circuit_open"},
        }
        assert headers["Retry-After"] in ("1", "2", "3")
        assert elapsed < 0.5  # milliseconds when the machine is idle; CI shares two cores with everything

        # after the cool-down, a probe against the still stopped service fails: open again
        wait_until(lambda: breaker_state(gateway, "users") == "half_open", timeout=15)
        assert gateway.request("GET", "/api/v1/users/1/")[0] == 503
        wait_until(lambda: breaker_state(gateway, "users") == "open", timeout=SHOWN_WITHIN)

        # when the service is back, after the cool-down one probe closes the breaker
        users_process.start()
        wait_until(lambda: breaker_state(gateway, "users") == "half_open", timeout=15)
        status, _, body = gateway.request("GET", "/api/v1/users/1/")
        assert status == 200
        assert json.loads(body) == {"path": "/api/v1/users/1/"}
        wait_until(lambda: breaker_state(gateway, "users") == "closed", timeout=SHOWN_WITHIN)
        assert "circuit breaker of users closed" in gateway.log()


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="needs REDIS_URL (real mode)")
def test_a_breaker_opened_in_one_gateway_worker_is_open_in_another_through_redis(
    tmp_path: Path, stubs: dict[str, StubUpstream], users: StubUpstream
) -> None:
    # given two gateway processes sharing one Redis (a fresh key prefix), and a failing service
    shared: dict[str, Any] = {
        "REDIS_URL": os.environ["REDIS_URL"],
        "BREAKER_REDIS_PREFIX": f"test-breaker-{uuid.uuid4().hex}",
        "BREAKER_FAILURES": "3",
        "BREAKER_RESET_TIMEOUT": "30",
        "BREAKER_SYNC_INTERVAL": "0.2",
        "UPSTREAM_CHECK_INTERVAL": "0",
    }
    users.reply("/api/v1/users/", status=500)
    upstreams = upstreams_with(stubs)
    with (
        gateway_process(tmp_path / "a", upstreams, **shared) as first,
        gateway_process(tmp_path / "b", upstreams, **shared) as second,
    ):
        # when the first sees three 500s (passed through as they came), its breaker opens
        assert [first.request("GET", "/api/v1/users/1/")[0] for _ in range(3)] == [500, 500, 500]
        assert breaker_state(first, "users") == "open"

        # then the second, which never saw a failure, refuses too, without calling the service
        wait_until(lambda: breaker_state(second, "users") == "open", timeout=15)
        status, headers, body = second.request("GET", "/api/v1/users/1/")
        assert status == 503
        assert json.loads(body)["error"]["details"]["reason"] == "circuit_open"
        assert int(headers["Retry-After"]) > 20
        assert len(users.received) == 3
        assert first.health()["upstreams"]["breakers"] == {"store": "redis", "status": "ok"}
