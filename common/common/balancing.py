"""Several instances per service: which of them are healthy, which one gets a call. Used by the gateway
(proxy/balancer.py) and by the service-to-service client (common/common/http.py), each wiring it to its own
settings.

- An :class:`InstanceSource` lists a service's base URLs: :class:`StaticInstances`, or
  :class:`common.discovery.ServiceInstances` (DNS, etcd). A :class:`HealthChecker` re-reads the sources
  periodically, so a dynamic one adds and drops instances without a restart; with etcd a
  :class:`RegistryWatcher` also re-reads a service as soon as one of its keys is put or deleted (the watch
  only triggers re-reads: a missed event costs at most one interval, never a wrong list). Calls never wait
  on the registry.
- Health, per process: the :class:`HealthChecker`'s daemon thread GETs each instance's ``/health/`` on its
  check interval, the one the instance registered (etcd) or else the owner's default, with the registered
  timeout or the default one; a failed check ejects the instance, the next passing one readmits it (one
  failure is enough, like nginx's ``max_fails=1``: a false ejection costs one interval, a missed one costs
  client errors). A connection error on a real call ejects it at once for a while (:meth:`Balancer.eject`,
  passive), without waiting for the next check; it is readmitted when that time is over or a check passes.
- Policies: ``random`` (the seed design's), ``round_robin`` and ``least_outstanding`` (the default: fewest
  calls in flight from this process, ties in turn). It adapts to an instance that is slow or overloaded,
  which round-robin keeps feeding at the same rate, and costs the same: a scan of a handful of counters
  under one lock.
- When every instance is ejected the balancer still picks one (fail open) rather than refusing: health is
  judged per process from a check that also reports shared dependencies (a service's /health/ fails when
  its broker does), so "all unhealthy" is more often a shared or a checking problem than an outage of
  every instance, and refusing would turn it into a certain one. A service that is really down is
  answered fast by its circuit breaker (common/common/breakers.py) instead.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3

from common import discovery
from common.daemons import PerProcessDaemon

logger = logging.getLogger(__name__)

POLICIES = ("least_outstanding", "round_robin", "random")
DEFAULT_POLICY = "least_outstanding"


class InstanceSource(Protocol):
    def urls(self) -> Sequence[str]:
        """The service's instances now, as base URLs without a trailing slash."""
        ...


class CheckedSource(InstanceSource, Protocol):
    def checks(self) -> Mapping[str, tuple[float, float]]:
        """The (check interval, check timeout) instances registered, by URL, as of the last :meth:`urls`."""
        ...


@dataclass(frozen=True)
class StaticInstances:
    configured: tuple[str, ...]

    def urls(self) -> Sequence[str]:
        return self.configured


class Instance:
    __slots__ = (
        "check_failed", "check_interval", "check_timeout", "checking", "ejected_until", "next_check_at",
        "outstanding", "reason", "url",
    )  # fmt: skip

    def __init__(self, url: str) -> None:
        self.url = url
        self.outstanding = 0
        self.ejected_until = 0.0  # monotonic time a passive ejection ends
        self.check_failed = False  # the last active check failed
        self.reason = ""
        self.check_interval = 0.0  # registered; 0: the checker's default
        self.check_timeout = 0.0  # registered; 0: the checker's default
        self.next_check_at = 0.0  # monotonic; 0: at the checker's next tick
        self.checking = False  # a check is in flight (a slow one is not doubled)

    def available(self, now: float) -> bool:
        return not self.check_failed and now >= self.ejected_until


class Balancer:
    def __init__(self, service: str, source: InstanceSource, policy: str = DEFAULT_POLICY) -> None:
        if policy not in POLICIES:
            raise ValueError(f"LOAD_BALANCER_POLICY must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.service = service
        self.policy = policy
        self._source = source
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()  # the watcher and the checker both refresh: no stale overwrite
        self._turn = itertools.count()
        self.instances: tuple[Instance, ...] = ()
        self.refresh()

    def refresh(self) -> None:
        """Follow the source: new instances join healthy, known ones keep their state."""
        with self._refresh_lock:
            urls = self._source.urls()
            if not urls:
                raise ValueError(f"no instance is configured for the service {self.service!r}")
            checks_of = getattr(self._source, "checks", None)
            checks: Mapping[str, tuple[float, float]] = checks_of() if checks_of else {}
            with self._lock:
                known = {instance.url: instance for instance in self.instances}
                instances = tuple(known.get(url) or Instance(url) for url in urls)
                for instance in instances:
                    instance.check_interval, instance.check_timeout = checks.get(instance.url, (0.0, 0.0))
                self.instances = instances

    def acquire(self, exclude: Collection[Instance] = ()) -> Instance:
        """An instance for one call (a retry passes the ones already tried); give it back with
        :meth:`release`."""
        instances = self.instances
        with self._lock:
            if len(instances) == 1:
                chosen = instances[0]  # the common case: nothing to choose, fail open included
            else:
                now = time.monotonic()
                candidates = [i for i in instances if i.available(now) and i not in exclude]
                if not candidates:
                    # fail open: an ejected instance that was not just tried, else any
                    candidates = [i for i in instances if i not in exclude] or list(instances)
                chosen = self._choose(candidates)
            chosen.outstanding += 1
        return chosen

    def _choose(self, candidates: list[Instance]) -> Instance:
        if self.policy == "random":
            return random.choice(candidates)  # noqa: S311 (load spreading, not security)
        turn = next(self._turn) % len(candidates)
        if self.policy == "round_robin":
            return candidates[turn]
        rotated = candidates[turn:] + candidates[:turn]  # ties go to each in turn
        return min(rotated, key=lambda instance: instance.outstanding)

    def release(self, instance: Instance) -> None:
        with self._lock:
            instance.outstanding -= 1

    def eject(self, instance: Instance, *, seconds: float, reason: str) -> None:
        """Passive ejection after a connection error on a real call."""
        until = time.monotonic() + seconds
        if instance.ejected_until < until:
            logger.warning("%s instance %s ejected for %.0f s: %s", self.service, instance.url, seconds, reason)
            instance.ejected_until = until
            instance.reason = reason

    def checked(self, instance: Instance, *, passed: bool, reason: str) -> None:
        if passed:
            if instance.check_failed or instance.ejected_until:
                logger.info("%s instance %s passes its health check again: readmitted", self.service, instance.url)
            instance.check_failed = False
            instance.ejected_until = 0.0
            instance.reason = ""
        else:
            if not instance.check_failed:
                logger.warning("%s instance %s failed its health check: %s", self.service, instance.url, reason)
            instance.check_failed = True
            instance.reason = reason

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "url": instance.url,
                "status": "healthy" if instance.available(now) else "ejected",
                **({"reason": instance.reason} if not instance.available(now) else {}),
                "outstanding": instance.outstanding,
            }
            for instance in self.instances
        ]

    def health_target(self) -> str:
        """The instance /health reports on for the whole service: an available one if any."""
        now = time.monotonic()
        return next((i.url for i in self.instances if i.available(now)), self.instances[0].url)


# Active checks ------------------------------------------------------------------------------------------


@functools.cache
def _check_pools() -> urllib3.PoolManager:
    # Apart from the calls' pools, so a check never waits for a free connection behind client traffic.
    return urllib3.PoolManager(num_pools=16, maxsize=1, retries=False)


def check_instance(url: str, timeout: float) -> tuple[bool, str]:
    try:
        answer = _check_pools().request(
            "GET", f"{url}/health/", timeout=urllib3.Timeout(connect=timeout, read=timeout), redirect=False
        )
    except urllib3.exceptions.NewConnectionError:  # a subclass of the timeout errors, but refused
        return False, "unreachable"
    except urllib3.exceptions.TimeoutError:
        return False, "timeout"
    except urllib3.exceptions.HTTPError:
        return False, "unreachable"
    return (True, "") if answer.status == 200 else (False, f"HTTP {answer.status}")


def refresh_each(balancers: Sequence[Balancer]) -> None:
    """Re-read these balancers' sources; one that fails keeps the instances known so far."""
    for each in balancers:
        try:
            each.refresh()
        except Exception:  # a discovery source failing keeps the instances known so far
            logger.exception("could not refresh the instances of %s", each.service)


class HealthChecker(PerProcessDaemon):
    """One daemon thread per process that re-reads the balancers' sources every ``refresh_interval()``
    seconds and checks their instances (each on its registered interval, else ``interval()``); either is
    off while its value is 0. The values are read on every round, so a new setting applies without a
    restart. :meth:`start` is called by the process that uses the balancers, so a gunicorn worker forked
    after import still gets its own thread."""

    def __init__(
        self,
        *,
        name: str,
        balancers: Callable[[], Sequence[Balancer]],
        interval: Callable[[], float],
        timeout: Callable[[], float],
        refresh_interval: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(name)
        self._balancers = balancers
        self._interval = interval
        self._timeout = timeout
        self._refresh_interval = refresh_interval or interval
        self.wake = threading.Event()  # set when instances change, so the checker reschedules at once

    def check_due(self, executor: ThreadPoolExecutor, now: float) -> float:
        """Start the checks that are due (each instance on its own interval), without waiting for them;
        the monotonic time the next one is due."""
        default_interval, default_timeout = self._interval(), self._timeout()
        next_due = now + default_interval
        for each in self._balancers():
            for instance in each.instances:
                if instance.next_check_at <= now and not instance.checking:
                    instance.checking = True
                    instance.next_check_at = now + (instance.check_interval or default_interval)
                    executor.submit(_check_one, each, instance, instance.check_timeout or default_timeout)
                next_due = min(next_due, instance.next_check_at)
        return next_due

    def run(self) -> None:
        refresh_at = 0.0
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"{self.name}-check") as executor:
            while True:
                interval, refresh_interval = self._interval(), self._refresh_interval()
                if interval <= 0 and refresh_interval <= 0:
                    time.sleep(5.0)
                    continue
                now = time.monotonic()
                next_due = now + max(interval, refresh_interval)
                try:
                    if refresh_interval > 0:  # the periodic re-read: the only one without etcd's watch
                        if now >= refresh_at:
                            refresh_at = now + refresh_interval
                            refresh_each(self._balancers())
                        next_due = min(next_due, refresh_at)
                    if interval > 0:
                        next_due = min(next_due, self.check_due(executor, now))
                except Exception:  # the checker must outlive any one bad round
                    logger.exception("%s: health check round failed", self.name)
                # never busier than every 50 ms, whatever an instance registered
                self.wake.wait(max(next_due - time.monotonic(), 0.05))
                self.wake.clear()


def _check_one(each: Balancer, instance: Instance, timeout: float) -> None:
    try:
        passed, reason = check_instance(instance.url, timeout)
        each.checked(instance, passed=passed, reason=reason)
    finally:
        instance.checking = False


# The etcd watch -----------------------------------------------------------------------------------------

WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX = 0.5, 30.0


def watch_forever(
    registry: discovery.EtcdRegistry,
    stop: threading.Event,
    on_change: Callable[[Collection[str] | None], None],
) -> None:
    """Call ``on_change`` with the services whose registrations changed (None: re-read all) until ``stop``
    is set, reconnecting with a doubling backoff when the watch fails."""
    backoff = WATCH_BACKOFF_MIN
    while not stop.is_set():
        try:
            # re-read everything once the watch is set up: the events missed while it was down are not
            # replayed, and the ones after this read are
            for event in registry.watch(stop=stop, on_created=lambda: on_change(None)):
                backoff = WATCH_BACKOFF_MIN  # the watch works again
                on_change({registry.service_of(event.key)})
        except discovery.DiscoveryError as exc:
            logger.warning("etcd watch failed, retrying in %.1f s (the periodic re-read goes on): %s", backoff, exc)
        except Exception:  # the watcher must outlive anything one event does
            logger.exception("etcd watch failed, retrying in %.1f s", backoff)
        if stop.wait(backoff):
            return
        backoff = min(backoff * 2, WATCH_BACKOFF_MAX)


class RegistryWatcher:
    """One watch thread per process (and etcd URL and prefix; following a new one stops the old one at its
    next message), re-reading the balancers of the services that changed and waking the checker."""

    def __init__(self, *, balancers: Callable[[], Sequence[Balancer]], checker: HealthChecker) -> None:
        self._balancers = balancers
        self._checker = checker
        self._lock = threading.Lock()
        self._current: tuple[int, str, str, threading.Event] | None = None

    def follow(self, url: str, prefix: str, *, timeout: float) -> None:
        with self._lock:
            if self._current is not None and self._current[:3] == (os.getpid(), url, prefix):
                return
            if self._current is not None:
                self._current[3].set()
            stop = threading.Event()
            self._current = (os.getpid(), url, prefix, stop)
        registry = discovery.EtcdRegistry(url, prefix=prefix, timeout=timeout)
        threading.Thread(
            target=watch_forever, args=(registry, stop, self.refresh), name="discovery-watch", daemon=True
        ).start()

    def refresh(self, services: Collection[str] | None) -> None:
        """Re-read the balancers of these services (all with None): outside the hot path, in the watcher."""
        refresh_each([b for b in self._balancers() if services is None or b.service in services])
        self._checker.wake.set()
