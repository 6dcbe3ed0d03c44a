"""The balancer shared by the gateway and the service client (common.balancing): policies, passive
ejection and readmission, active health checks against real servers on loopback, and the etcd watch's
reconnection."""

from __future__ import annotations

import http.server
import itertools
import threading
import time
from collections.abc import Callable

import pytest

from common import balancing, discovery
from common.balancing import Balancer, HealthChecker, StaticInstances
from tests.loopback import LoopbackServer, Reply, closed_port, loopback_server

A, B, C = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout} s")
        time.sleep(0.02)


class MutableSource:
    def __init__(self, *urls: str) -> None:
        self.current = list(urls)

    def urls(self) -> list[str]:
        return list(self.current)


def test_least_outstanding_picks_the_instance_with_the_fewest_calls_in_flight() -> None:
    balancer = Balancer("orders", StaticInstances((A, B, C)))
    first, second = balancer.acquire(), balancer.acquire()
    third = balancer.acquire()
    assert {first.url, second.url, third.url} == {A, B, C}  # ties go to each in turn
    balancer.release(second)
    assert balancer.acquire() is second  # the only one with nothing in flight


def test_round_robin_takes_each_in_turn() -> None:
    balancer = Balancer("orders", StaticInstances((A, B)), "round_robin")
    picked = [balancer.acquire().url for _ in range(4)]
    assert picked in ([A, B, A, B], [B, A, B, A])


def test_an_unknown_policy_and_an_empty_source_are_refused() -> None:
    with pytest.raises(ValueError, match="LOAD_BALANCER_POLICY"):
        Balancer("orders", StaticInstances((A,)), "fastest")
    with pytest.raises(ValueError, match="no instance"):
        Balancer("orders", StaticInstances(()))


def test_a_retry_gets_another_instance_than_those_tried() -> None:
    balancer = Balancer("orders", StaticInstances((A, B)), "random")
    tried = balancer.acquire()
    assert balancer.acquire(exclude=[tried]) is not tried


def test_an_ejected_instance_is_skipped_until_its_ejection_ends_then_readmitted() -> None:
    balancer = Balancer("orders", StaticInstances((A, B)), "random")
    a = next(i for i in balancer.instances if i.url == A)
    balancer.eject(a, seconds=0.2, reason="unreachable")

    assert {balancer.acquire().url for _ in range(20)} == {B}
    assert balancer.status()[0] == {"url": A, "status": "ejected", "reason": "unreachable", "outstanding": 0}
    time.sleep(0.25)
    assert A in {balancer.acquire().url for _ in range(40)}


def test_with_every_instance_ejected_it_fails_open() -> None:
    balancer = Balancer("orders", StaticInstances((A, B)))
    for instance in balancer.instances:
        balancer.eject(instance, seconds=60, reason="unreachable")
    first = balancer.acquire()
    assert balancer.acquire(exclude=[first]) is not first  # an ejected one not just tried
    assert balancer.acquire(exclude=list(balancer.instances)).url in (A, B)  # else any


def test_a_refresh_adds_and_drops_instances_and_keeps_the_state_of_known_ones() -> None:
    source = MutableSource(A, B)
    balancer = Balancer("orders", source)
    a = balancer.instances[0]
    balancer.eject(a, seconds=60, reason="unreachable")
    source.current = [A, C]
    balancer.refresh()
    assert [i.url for i in balancer.instances] == [A, C]
    assert balancer.instances[0] is a
    assert not a.available(time.monotonic())
    assert balancer.health_target() == C


def test_check_instance_tells_refused_slow_and_failing_instances_apart(server: LoopbackServer) -> None:
    assert balancing.check_instance(server.url, 1.0) == (True, "")
    server.answer(Reply(503))
    assert balancing.check_instance(server.url, 1.0) == (False, "HTTP 503")
    server.answer(Reply(200, delay=1.0))
    assert balancing.check_instance(server.url, 0.2) == (False, "timeout")
    assert balancing.check_instance(f"http://127.0.0.1:{closed_port()}", 1.0) == (False, "unreachable")


def test_the_checker_ejects_a_failing_instance_and_readmits_it_when_it_passes_again(server: LoopbackServer) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    balancer = Balancer("orders", StaticInstances((server.url, dead)))
    checker = HealthChecker(
        name=f"test-health-{id(balancer)}", balancers=lambda: [balancer], interval=lambda: 0.1, timeout=lambda: 0.5
    )
    checker.start()

    wait_until(lambda: [i["status"] for i in balancer.status()] == ["healthy", "ejected"], timeout=3)
    assert balancer.status()[1]["reason"] == "unreachable"
    assert {balancer.acquire().url for _ in range(10)} == {server.url}

    server.answer(Reply(503))  # the live one starts failing its checks too
    wait_until(lambda: balancer.status()[0]["status"] == "ejected", timeout=3)
    server.answer(Reply(200))
    wait_until(lambda: balancer.status()[0]["status"] == "healthy", timeout=3)
    assert server.requests_to("/health/")


def test_the_checker_rereads_the_source_so_a_new_instance_joins() -> None:
    with loopback_server() as first, loopback_server() as later:
        source = MutableSource(first.url)
        balancer = Balancer("orders", source)
        checker = HealthChecker(
            name=f"test-refresh-{id(balancer)}",
            balancers=lambda: [balancer],
            interval=lambda: 0.0,  # no checks, only the periodic re-read
            timeout=lambda: 0.5,
            refresh_interval=lambda: 0.1,
        )
        checker.start()
        source.current.append(later.url)
        wait_until(lambda: len(balancer.instances) == 2, timeout=3)
        assert not first.received  # re-reads do not check


# the etcd watch (moved from the gateway's tests: it is this module's) ---------------------------------


class _FailingEtcd(http.server.BaseHTTPRequestHandler):
    """An etcd whose watch ends at once (a restart, a compaction): 200 and no stream."""

    attempts: list[float]

    def do_POST(self) -> None:
        self.attempts.append(time.monotonic())
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_failing_watch_reconnects_with_backoff_and_stops_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[float] = []
    handler = type("Handler", (_FailingEtcd,), {"attempts": attempts})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(balancing, "WATCH_BACKOFF_MIN", 0.05)
    registry = discovery.EtcdRegistry(f"http://127.0.0.1:{server.server_address[1]}", prefix="/x/")
    stop = threading.Event()
    changes: list[object] = []
    watcher = threading.Thread(target=balancing.watch_forever, args=(registry, stop, changes.append), daemon=True)
    try:
        watcher.start()
        wait_until(lambda: len(attempts) >= 4, timeout=5)
        gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
        # 0.05, 0.1, 0.2 s: doubling, not hammering etcd
        assert gaps[0] >= 0.04
        assert gaps[2] >= 0.18
        # and the watcher is still there, retrying; told to stop, it ends during its backoff
        assert watcher.is_alive()
        stop.set()
        watcher.join(timeout=5)
        assert not watcher.is_alive()
        assert changes == []  # no watch was ever set up: nothing to re-read
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
