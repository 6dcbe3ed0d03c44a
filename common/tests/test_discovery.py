"""Service discovery against real resolvers and a real etcd: the static list, DNS (the system resolver
for A/AAAA, a small DNS server on loopback for SRV), and etcd registration, lease expiry, deregistration
and watches, including the gunicorn hooks in a real gunicorn stopped with SIGTERM and SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from common import discovery
from common.etcd_testing import etcd_url
from common.http import forget_clients, service_client
from tests.loopback import closed_port, loopback_server


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not true after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def registration(service: str, port: int, instance: str = "a") -> discovery.Registration:
    return discovery.Registration(
        service=service,
        instance_id=f"{service}-{instance}",
        address="127.0.0.1",
        port=port,
        health_url=f"http://127.0.0.1:{port}/health/",
        check_interval=1.0,
        check_timeout=0.5,
    )


# static ---------------------------------------------------------------------------------------------------


def test_static_registry_lists_the_configured_urls_comma_separated() -> None:
    registry = discovery.make_registry(
        backend="static", configured={"orders": "http://127.0.0.1:1/ , http://127.0.0.1:2", "users": "http://u"}
    )
    assert registry.urls("orders") == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert registry.urls("users") == ("http://u",)


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="DISCOVERY_BACKEND"):
        discovery.make_registry(backend="zookeeper", configured={})


# DNS ------------------------------------------------------------------------------------------------------


def test_dns_resolves_a_name_to_one_instance_per_address_on_the_urls_port() -> None:
    registry = discovery.DnsRegistry({"orders": "http://localhost:8123"})
    urls = registry.urls("orders")
    assert "http://127.0.0.1:8123" in urls
    assert set(urls) <= {"http://127.0.0.1:8123", "http://[::1]:8123"}


def test_dns_reports_an_unresolvable_name() -> None:
    registry = discovery.DnsRegistry({"orders": "http://no-such-host.invalid:80"})
    with pytest.raises(discovery.DiscoveryError):
        registry.urls("orders")


@pytest.fixture
def srv_server() -> Iterator[str]:
    """A DNS server on a free UDP loopback port answering SRV queries for _http._tcp.orders.test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(512)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            if question.rdtype == dns.rdatatype.SRV and question.name.to_text() == "_http._tcp.orders.test.":
                response.answer.append(
                    dns.rrset.from_text(question.name, 30, "IN", "SRV", "10 5 9002 localhost.", "20 5 9012 localhost.")
                )
            else:
                response.set_rcode(3)  # NXDOMAIN
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    sock.close()


def test_dns_srv_gives_one_instance_per_target_and_port_in_priority_order(srv_server: str) -> None:
    registry = discovery.DnsRegistry({"orders": "http://_http._tcp.orders.test"}, nameserver=srv_server)
    assert registry.urls("orders") == ["http://localhost:9002", "http://localhost:9012"]


def test_dns_srv_reports_a_missing_name(srv_server: str) -> None:
    registry = discovery.DnsRegistry({"orders": "http://_http._tcp.nothing.test"}, nameserver=srv_server)
    with pytest.raises(discovery.DiscoveryError):
        registry.urls("orders")


# etcd -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def etcd() -> Iterator[str]:
    with etcd_url() as url:
        if url is None:
            pytest.skip("no etcd: set ETCD_URL or install Debian's etcd-server")
        yield url


@pytest.fixture
def registry(etcd: str) -> discovery.EtcdRegistry:
    # A prefix of its own: parallel runs and other tests against the same etcd never see each other's keys.
    return discovery.EtcdRegistry(etcd, prefix=f"/test-{uuid.uuid4().hex}/")


def test_a_registered_instance_is_listed_and_a_clean_stop_deregisters_it(registry: discovery.EtcdRegistry) -> None:
    registrar = discovery.Registrar(registry, registration("orders", 9000), ttl=5)
    registrar.start()
    assert registry.registrations("orders") == [registration("orders", 9000)]
    assert registry.urls("orders") == ["http://127.0.0.1:9000"]
    assert registry.urls("users") == []

    registrar.stop()
    assert registry.urls("orders") == []  # at once, not when the lease would have expired


def test_the_keepalive_holds_a_registration_past_its_ttl(registry: discovery.EtcdRegistry) -> None:
    registrar = discovery.Registrar(registry, registration("orders", 9000), ttl=2)
    registrar.start()
    time.sleep(2.5)
    assert registry.urls("orders") == ["http://127.0.0.1:9000"]
    registrar.stop()


def test_a_crashed_instance_disappears_when_its_lease_expires(registry: discovery.EtcdRegistry) -> None:
    registrar = discovery.Registrar(registry, registration("orders", 9000), ttl=2)
    registrar.start()
    registrar.pause()  # no more keep-alives, no deregistration: a crash
    assert registry.urls("orders") == ["http://127.0.0.1:9000"]
    waited = wait_for(lambda: registry.urls("orders") == [], timeout=5)
    assert waited <= 3.5


def test_an_expired_lease_is_replaced_while_the_instance_runs(registry: discovery.EtcdRegistry) -> None:
    registrar = discovery.Registrar(registry, registration("orders", 9000), ttl=3)
    registrar.start()
    registry.revoke(registrar.lease)  # what etcd losing the lease looks like
    assert registry.urls("orders") == []
    wait_for(lambda: registry.urls("orders") == ["http://127.0.0.1:9000"], timeout=3)
    registrar.stop()


def test_a_watcher_sees_registrations_and_deregistrations(registry: discovery.EtcdRegistry) -> None:
    stop = threading.Event()
    events: list[discovery.WatchEvent] = []

    def watch() -> None:
        events.extend(registry.watch("orders", stop=stop))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.3)  # the watch is created
    first = discovery.Registrar(registry, registration("orders", 9000, "a"), ttl=5)
    second = discovery.Registrar(registry, registration("orders", 9001, "b"), ttl=5)
    first.start()
    second.start()
    first.stop()
    wait_for(lambda: len(events) >= 3, timeout=3)
    stop.set()
    assert [(e.kind, e.key.rsplit("/", 1)[1]) for e in events[:3]] == [
        ("put", "orders-a"),
        ("put", "orders-b"),
        ("delete", "orders-a"),
    ]
    assert events[1].registration == registration("orders", 9001, "b")
    second.stop()


def test_an_unreachable_etcd_is_a_discovery_error() -> None:
    registry = discovery.EtcdRegistry(f"http://127.0.0.1:{closed_port()}", timeout=0.5)
    with pytest.raises(discovery.DiscoveryError):
        registry.urls("orders")


def test_service_instances_fall_back_to_the_configured_url_and_keep_the_last_known_ones(
    registry: discovery.EtcdRegistry,
) -> None:
    instances = discovery.ServiceInstances(registry, "orders", fallback="http://127.0.0.1:8002")
    assert instances.urls() == ("http://127.0.0.1:8002",)  # nothing registered yet
    registrar = discovery.Registrar(registry, registration("orders", 9000), ttl=5)
    registrar.start()
    assert instances.urls() == ["http://127.0.0.1:9000"]
    etcd, registry.url = registry.url, f"http://127.0.0.1:{closed_port()}"  # etcd goes away
    assert instances.urls() == ["http://127.0.0.1:9000"]
    registry.url = etcd
    registrar.stop()


# gunicorn hooks: one registration per instance, removed on SIGTERM, expiring after SIGKILL -------------


def start_gunicorn(etcd: str, prefix: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DISCOVERY_BACKEND": "etcd",
        "DISCOVERY_SERVICE": "hello",
        "ETCD_URL": etcd,
        "ETCD_PREFIX": prefix,
        "DISCOVERY_TTL": "2",
    }
    command = [
        sys.executable, "-m", "gunicorn", "tests.wsgi_hello:application", "--bind", f"127.0.0.1:{port}",
        "--workers", "2", "--config", "python:common.gunicorn_hooks", "--no-control-socket",
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, env=env)  # noqa: S603


def test_a_gunicorn_instance_registers_once_and_deregisters_on_sigterm(etcd: str) -> None:
    prefix = f"/test-{uuid.uuid4().hex}/"
    registry = discovery.EtcdRegistry(etcd, prefix=prefix)
    port = closed_port()
    server = start_gunicorn(etcd, prefix, port)
    try:
        wait_for(lambda: registry.urls("hello") != [], timeout=15)
        time.sleep(0.5)  # both workers are up: still one registration (the master's)
        found = registry.registrations("hello")
        assert [r.url for r in found] == [f"http://127.0.0.1:{port}"]
        assert found[0].health_url == f"http://127.0.0.1:{port}/health/"
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
        assert registry.urls("hello") == []
    finally:
        server.kill()
        server.wait()


def test_a_killed_gunicorn_instance_disappears_after_its_ttl(etcd: str) -> None:
    prefix = f"/test-{uuid.uuid4().hex}/"
    registry = discovery.EtcdRegistry(etcd, prefix=prefix)
    server = start_gunicorn(etcd, prefix, closed_port())
    try:
        wait_for(lambda: registry.urls("hello") != [], timeout=15)
        server.kill()  # SIGKILL to the master: no on_exit hook runs, as in a crash
        assert wait_for(lambda: registry.urls("hello") == [], timeout=6) <= 3.5
    finally:
        server.kill()
        server.wait()


# the service client through etcd: the same watch as the gateway's ------------------------------------


def test_a_service_client_reaches_a_second_instance_as_soon_as_it_registers(etcd: str, settings: Any) -> None:
    settings.DISCOVERY_BACKEND, settings.ETCD_URL = "etcd", etcd
    settings.ETCD_PREFIX = f"/test-{uuid.uuid4().hex}/"
    settings.DISCOVERY_REFRESH_SECONDS = 600.0  # only the watch can bring the second one in time
    settings.SERVICE_CHECK_INTERVAL = 0.0
    settings.SERVICE_BREAKER_REDIS_URL = ""
    registry = discovery.EtcdRegistry(etcd, prefix=settings.ETCD_PREFIX)
    with loopback_server() as first, loopback_server() as second:
        registrars = [
            discovery.Registrar(registry, registration("users", int(server.url.rsplit(":", 1)[1]), name), ttl=5)
            for server, name in ((first, "a"), (second, "b"))
        ]
        registrars[0].start()
        try:
            client = service_client(audience="users", base_url=f"http://127.0.0.1:{closed_port()}")
            assert [i.url for i in client.balancer.instances] == [first.url]  # not the fallback URL
            registrars[1].start()
            wait_for(lambda: len(client.balancer.instances) == 2, timeout=5)
            for _ in range(4):
                client.request("GET", "/ping")
            assert len(first.requests_to("/ping")) == len(second.requests_to("/ping")) == 2
        finally:
            for registrar in registrars:
                registrar.stop()
            forget_clients()
