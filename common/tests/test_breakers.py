"""The circuit breaker shared by the gateway and the service client (common.breakers): its states, probes,
thresholds read on each use, and its state shared through a real Redis (and what a dead Redis costs)."""

from __future__ import annotations

import time
import uuid

import pytest

from common import breakers
from common.breakers import Breaker, BreakerOpen, BreakerSync, SharedStates
from tests.loopback import closed_port


def fail(breaker: Breaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record(success=False, probe=breaker.admit())


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    breaker = Breaker("users", failures=3, reset_timeout=10.0)
    fail(breaker, 2)
    breaker.record(success=True, probe=breaker.admit())
    fail(breaker, 2)
    assert breaker.state == "closed"
    fail(breaker)
    assert breaker.state == "open"
    with pytest.raises(BreakerOpen) as refused:
        breaker.admit()
    assert refused.value.service == "users"
    assert 9 <= refused.value.retry_after <= 10


def test_after_the_cool_down_one_probe_goes_through_and_its_success_closes_it() -> None:
    breaker = Breaker("users", failures=1, reset_timeout=0.2, probes=1)
    fail(breaker)
    time.sleep(0.25)
    assert breaker.state == "half_open"
    probe = breaker.admit()
    assert probe is True
    with pytest.raises(BreakerOpen):
        breaker.admit()  # one probe at a time
    breaker.record(success=True, probe=probe)
    assert breaker.state == "closed"
    assert breaker.admit() is False


def test_a_failed_probe_opens_it_for_another_cool_down_and_a_cancelled_one_frees_its_slot() -> None:
    breaker = Breaker("users", failures=1, reset_timeout=0.2)
    fail(breaker)
    time.sleep(0.25)
    breaker.cancel(breaker.admit())  # never reached the service
    probe = breaker.admit()  # the slot is free again
    breaker.record(success=False, probe=probe)
    assert breaker.state == "open"
    with pytest.raises(BreakerOpen):
        breaker.admit()


def test_thresholds_given_as_callables_apply_to_an_existing_breaker_without_losing_its_state() -> None:
    current = {"failures": 5, "reset": 10.0}
    breaker = Breaker("users", failures=lambda: current["failures"], reset_timeout=lambda: current["reset"])
    fail(breaker, 2)
    current["failures"] = 3  # lowered at runtime: the two failures so far still count
    fail(breaker)
    assert breaker.state == "open"
    current["reset"] = 0.0  # a shorter cool-down applies to the open breaker at once
    assert breaker.state == "half_open"
    assert (breaker.max_failures, breaker.reset_timeout) == (3, 0.0)


def test_an_unreachable_redis_costs_no_call_and_the_breaker_goes_on_locally() -> None:
    shared = SharedStates(f"redis://127.0.0.1:{closed_port()}/0", "test")
    breaker = Breaker("users", failures=1, reset_timeout=0.1, shared=shared)
    fail(breaker)  # the publish fails quietly
    assert breaker.state == "open"
    time.sleep(0.15)
    assert breaker.admit() is True  # a probe, though Redis cannot count it
    assert shared.read(["users"]) == {}
    assert not shared.healthy()


def test_states_are_shared_through_redis_and_probes_are_bounded_across_processes(redis_url: str) -> None:
    prefix = f"test-breaker-{uuid.uuid4().hex}"
    here = Breaker("users", failures=2, reset_timeout=0.3, shared=SharedStates(redis_url, prefix))
    there_shared = SharedStates(redis_url, prefix)
    there = Breaker("users", failures=2, reset_timeout=0.3, shared=there_shared)

    fail(here, 2)
    breakers.sync_once(there_shared, {"users": there})
    assert there.state == "open"  # adopted from Redis
    with pytest.raises(BreakerOpen):
        there.admit()

    time.sleep(0.35)
    probe = here.admit()
    with pytest.raises(BreakerOpen):
        there.admit()  # the one probe slot of this opening is taken, in another process
    here.record(success=True, probe=probe)
    breakers.sync_once(there_shared, {"users": there})
    assert there.state == "closed"
    assert there_shared.healthy()


def test_the_sync_thread_outlives_a_failing_round() -> None:
    rounds: list[int] = []

    def sync() -> None:
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("a bad round")

    # every 20 ms for three rounds, then (the thread cannot be stopped) hardly ever
    BreakerSync(name="test-breaker-sync", sync=sync, interval=lambda: 0.02 if len(rounds) < 3 else 3600).start()
    deadline = time.monotonic() + 3
    while len(rounds) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
