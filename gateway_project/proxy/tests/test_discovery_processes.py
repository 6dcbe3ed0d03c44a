"""Service discovery through etcd, end to end: a real gunicorn gateway, a real etcd, upstream instances
that register, stop and deregister while the gateway runs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from common import discovery
from common.etcd_testing import etcd_url
from proxy import balancer
from proxy.tests.gateway_process import GatewayProcess, RestartableStub, gateway_process, wait_until
from proxy.tests.upstream_stub import StubUpstream

CHECK_INTERVAL, CHECK_TIMEOUT = 0.5, 0.5


@pytest.fixture(scope="module")
def etcd() -> Iterator[str]:
    with etcd_url() as url:
        if url is None:
            pytest.skip("no etcd: set ETCD_URL or install Debian's etcd-server")
        yield url


@pytest.fixture
def instances() -> Iterator[tuple[RestartableStub, RestartableStub]]:
    first, second = RestartableStub("orders-a"), RestartableStub("orders-b")
    for stub in (first, second):
        stub.reset()
    yield first, second
    for stub in (first, second):
        stub.stop()


def register(registry: discovery.EtcdRegistry, stub: RestartableStub, name: str) -> discovery.Registrar:
    port = int(stub.url.rsplit(":", 1)[1])
    registration = discovery.Registration(
        service="orders",
        instance_id=name,
        address="127.0.0.1",
        port=port,
        health_url=f"{stub.url}/health/",
        check_interval=CHECK_INTERVAL,
        check_timeout=CHECK_TIMEOUT,
    )
    registrar = discovery.Registrar(registry, registration, ttl=5)
    registrar.start()
    return registrar


def listed(gateway: GatewayProcess) -> dict[str, str]:
    found = gateway.health()["upstreams"]["services"]["orders"]["instances"]
    return {instance["url"]: instance["status"] for instance in found}


def test_a_registered_instance_gets_traffic_and_a_killed_one_stops_within_interval_plus_timeout(
    tmp_path: Path, etcd: str, stubs: dict[str, StubUpstream], instances: tuple[RestartableStub, RestartableStub]
) -> None:
    first, second = instances
    prefix = f"/test-{uuid.uuid4().hex}/"
    registry = discovery.EtcdRegistry(etcd, prefix=prefix)
    upstreams = {name: stub.url for name, stub in stubs.items()}
    settings = {
        "DISCOVERY_BACKEND": "etcd",
        "ETCD_URL": etcd,
        "ETCD_PREFIX": prefix,
        "LOAD_BALANCER_POLICY": "round_robin",
        "UPSTREAM_CHECK_INTERVAL": str(CHECK_INTERVAL),
        "UPSTREAM_CHECK_TIMEOUT": str(CHECK_TIMEOUT),
        "UPSTREAM_EJECT_SECONDS": "60",
    }
    a = register(registry, first, "orders-a")
    with gateway_process(tmp_path, upstreams, **settings) as gateway:
        # given one registered instance: it takes all the traffic (not the configured ORDER_SERVICE_URL)
        assert [gateway.request("GET", "/api/v1/products/")[0] for _ in range(4)] == [200] * 4
        assert len(first.received) == 4
        assert stubs["orders"].received == []

        # when a second registers, the gateway lists it within a check round and sends it traffic
        b = register(registry, second, "orders-b")
        wait_until(lambda: listed(gateway).get(second.url) == "healthy", timeout=CHECK_INTERVAL * 4)
        assert [gateway.request("GET", "/api/v1/products/")[0] for _ in range(6)] == [200] * 6
        assert len(second.received) == 3

        # when the second is killed (still registered: its lease has not expired), the active checks
        # eject it within one check interval plus the check timeout, and it gets no more traffic
        second.stop()
        killed = time.monotonic()
        wait_until(lambda: listed(gateway)[second.url] == "ejected", timeout=5)
        assert time.monotonic() - killed <= CHECK_INTERVAL + CHECK_TIMEOUT + 0.5  # slack: the health poll
        second.received.clear()
        assert [gateway.request("GET", "/api/v1/products/")[0] for _ in range(4)] == [200] * 4
        assert second.received == []

        # when it deregisters, the gateway forgets it
        b.stop()
        wait_until(lambda: second.url not in listed(gateway), timeout=CHECK_INTERVAL * 4)
    a.stop()


def test_the_watch_brings_registrations_and_deregistrations_long_before_a_check_interval(
    tmp_path: Path, etcd: str, stubs: dict[str, StubUpstream], instances: tuple[RestartableStub, RestartableStub]
) -> None:
    first, second = instances
    prefix = f"/test-{uuid.uuid4().hex}/"
    registry = discovery.EtcdRegistry(etcd, prefix=prefix)
    upstreams = {name: stub.url for name, stub in stubs.items()}
    settings = {
        "DISCOVERY_BACKEND": "etcd",
        "ETCD_URL": etcd,
        "ETCD_PREFIX": prefix,
        "LOAD_BALANCER_POLICY": "round_robin",
        # 30 s: nothing below happens within one re-read or check round of the gateway's own settings, so
        # only the etcd watch and the instances' registered check interval can explain it
        "UPSTREAM_CHECK_INTERVAL": "30",
        "UPSTREAM_CHECK_TIMEOUT": "5",
        "UPSTREAM_EJECT_SECONDS": "60",
    }
    a = register(registry, first, "orders-a")
    with gateway_process(tmp_path, upstreams, workers=2, **settings) as gateway:
        assert [gateway.request("GET", "/api/v1/products/")[0] for _ in range(4)] == [200] * 4
        assert len(first.received) == 4

        # when a second instance registers, the watch lists it at once and it gets its share of traffic
        registered = time.monotonic()
        b = register(registry, second, "orders-b")
        wait_until(lambda: listed(gateway).get(second.url) == "healthy", timeout=3)
        assert time.monotonic() - registered < 3
        assert [gateway.request("GET", "/api/v1/products/")[0] for _ in range(10)] == [200] * 10
        assert len(second.received) >= 4  # round robin in each of the two workers, however they split

        # when it is killed while registered, its own check interval (0.5 s) ejects it, not the 30 s
        second.stop()
        killed = time.monotonic()
        wait_until(lambda: listed(gateway)[second.url] == "ejected", timeout=5)
        assert time.monotonic() - killed <= CHECK_INTERVAL + CHECK_TIMEOUT + 0.5  # slack: the health poll
        second.start_again()
        wait_until(lambda: listed(gateway)[second.url] == "healthy", timeout=3)

        # when it deregisters (running and healthy), every worker drops it at once: no more traffic
        b.stop()
        deregistered = time.monotonic()
        wait_until(lambda: second.url not in listed(gateway), timeout=3)
        assert time.monotonic() - deregistered < 3
        second.received.clear()
        assert [gateway.request("GET", "/api/v1/products/")[0] for _ in range(10)] == [200] * 10
        assert second.received == []
    a.stop()


def test_the_dns_backend_gives_the_gateway_one_instance_per_address() -> None:
    upstreams = {**settings.UPSTREAMS, "orders": "http://localhost:8123"}
    with override_settings(DISCOVERY_BACKEND="dns", UPSTREAMS=upstreams):
        assert "http://127.0.0.1:8123" in balancer.instance_source("orders").urls()


def test_an_unknown_discovery_backend_is_refused() -> None:
    with override_settings(DISCOVERY_BACKEND="consul"), pytest.raises(ValueError, match="DISCOVERY_BACKEND"):
        balancer.instance_source("orders")
