"""Several instances per service: where they come from, which of them are healthy, which one gets a call.

- An :class:`InstanceSource` lists a service's base URLs. Today that is :class:`StaticInstances`, read
  from ``*_SERVICE_URL`` (one URL or a comma-separated list); service discovery (DNS, etcd) plugs in by
  returning another source from :func:`instance_source`. Sources are re-read every
  ``UPSTREAM_CHECK_INTERVAL``, so a dynamic one adds and drops instances without a restart. With etcd, one
  daemon thread per worker process also watches the registry's prefix and re-reads a service as soon as
  one of its keys is put or deleted (the watch only triggers re-reads: a missed event costs at most one
  interval, never a wrong list); requests never wait on etcd.
- Health, per gateway worker process: a daemon thread GETs each instance's ``/health/`` every check
  interval, the one the instance registered (etcd) or else ``UPSTREAM_CHECK_INTERVAL``, with the registered
  timeout or ``UPSTREAM_CHECK_TIMEOUT``; a failed check ejects the instance, the next passing one readmits it
  (one failure is enough, like nginx's ``max_fails=1``: a false ejection costs one interval, a missed one
  costs client errors). A connection error on a real call ejects it at once for ``UPSTREAM_EJECT_SECONDS``
  (passive), without waiting for the next check.
- Policies (``LOAD_BALANCER_POLICY``): ``random`` (the seed design's), ``round_robin`` and
  ``least_outstanding`` (the default: fewest calls in flight from this process, ties in turn). It adapts
  to an instance that is slow or overloaded, which round-robin keeps feeding at the same rate, and costs
  the same: a scan of a handful of counters under one lock.
- When every instance is ejected the balancer still picks one (fail open) rather than refusing: health is
  judged per worker from a check that also reports shared dependencies (a service's /health/ fails when
  its broker does), so "all unhealthy" is more often a shared or a checking problem than an outage of
  every instance, and refusing would turn it into a certain one. A service that is really down is
  answered fast by its circuit breaker (proxy/breakers.py) instead.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3
from django.conf import settings

from common import discovery

logger = logging.getLogger(__name__)

POLICIES = ("least_outstanding", "round_robin", "random")


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


def parse_urls(value: str) -> tuple[str, ...]:
    return tuple(url.strip().rstrip("/") for url in value.split(",") if url.strip())


def instance_source(service: str) -> InstanceSource:
    """The one seam for service discovery (``DISCOVERY_BACKEND``, common/common/discovery.py)."""
    if settings.DISCOVERY_BACKEND == "static":
        return StaticInstances(parse_urls(settings.UPSTREAMS[service]))
    registry = discovery.make_registry(
        backend=settings.DISCOVERY_BACKEND,
        configured=settings.UPSTREAMS,
        etcd_url=settings.ETCD_URL,
        etcd_prefix=settings.ETCD_PREFIX,
        dns_server=settings.DISCOVERY_DNS_SERVER,
        timeout=settings.UPSTREAM_CHECK_TIMEOUT,
    )
    return discovery.ServiceInstances(registry, service, fallback=settings.UPSTREAMS[service])


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
        self.check_interval = 0.0  # registered; 0: UPSTREAM_CHECK_INTERVAL
        self.check_timeout = 0.0  # registered; 0: UPSTREAM_CHECK_TIMEOUT
        self.next_check_at = 0.0  # monotonic; 0: at the checker's next tick
        self.checking = False  # a check is in flight (a slow one is not doubled)

    def available(self, now: float) -> bool:
        return not self.check_failed and now >= self.ejected_until


class Balancer:
    def __init__(self, service: str, source: InstanceSource, policy: str) -> None:
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


# One balancer per service and worker process, created on first use; a new configuration (tests change
# settings) makes a new one. The checker thread is started in the process that uses the balancers, so a
# gunicorn worker forked after import still gets its own.
_balancers: dict[tuple[str, str, str, str], Balancer] = {}
_registry_lock = threading.Lock()
_checker_pid = 0


def balancer(service: str) -> Balancer:
    key = (service, settings.UPSTREAMS[service], settings.LOAD_BALANCER_POLICY, settings.DISCOVERY_BACKEND)
    found = _balancers.get(key)
    if found is not None:
        return found
    with _registry_lock:
        found = _balancers.get(key)
        if found is None:
            found = Balancer(service, instance_source(service), settings.LOAD_BALANCER_POLICY)
            for old in [k for k in _balancers if k[0] == service]:
                del _balancers[old]
            _balancers[key] = found
        _start_checker()
        if settings.DISCOVERY_BACKEND == "etcd":
            _start_watcher(settings.ETCD_URL, settings.ETCD_PREFIX)
    return found


def balancers() -> list[Balancer]:
    return [balancer(service) for service in settings.UPSTREAMS]


def reset() -> None:
    """Forget every balancer (tests)."""
    with _registry_lock:
        _balancers.clear()


_wake = threading.Event()  # set when instances change, so the checker reschedules at once


def _start_checker() -> None:
    global _checker_pid
    if _checker_pid == os.getpid():
        return
    _checker_pid = os.getpid()
    threading.Thread(target=_check_forever, name="upstream-health", daemon=True).start()


# The etcd watch: one thread per process (and etcd URL and prefix; a new configuration stops the old one
# at its next message). Called with _registry_lock held.
_watcher: tuple[int, str, str, threading.Event] | None = None
WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX = 0.5, 30.0


def _start_watcher(url: str, prefix: str) -> None:
    global _watcher
    if _watcher is not None and _watcher[:3] == (os.getpid(), url, prefix):
        return
    if _watcher is not None:
        _watcher[3].set()
    stop = threading.Event()
    _watcher = (os.getpid(), url, prefix, stop)
    registry = discovery.EtcdRegistry(url, prefix=prefix, timeout=settings.UPSTREAM_CHECK_TIMEOUT)
    threading.Thread(target=_watch_forever, args=(registry, stop), name="discovery-watch", daemon=True).start()


def _refresh_services(services: Collection[str] | None) -> None:
    """Re-read the balancers of these services (all with None): outside the hot path, in the watcher."""
    with _registry_lock:
        current = [b for b in _balancers.values() if services is None or b.service in services]
    for each in current:
        try:
            each.refresh()
        except Exception:  # keep the instances known so far; the periodic re-read tries again
            logger.exception("could not refresh the instances of %s", each.service)
    _wake.set()


def _watch_forever(registry: discovery.EtcdRegistry, stop: threading.Event) -> None:
    backoff = WATCH_BACKOFF_MIN
    while not stop.is_set():
        try:
            # re-read everything once the watch is set up: the events missed while it was down are not
            # replayed, and the ones after this read are
            for event in registry.watch(stop=stop, on_created=lambda: _refresh_services(None)):
                backoff = WATCH_BACKOFF_MIN  # the watch works again
                _refresh_services({registry.service_of(event.key)})
        except discovery.DiscoveryError as exc:
            logger.warning("etcd watch failed, retrying in %.1f s (the periodic re-read goes on): %s", backoff, exc)
        except Exception:  # the watcher must outlive anything one event does
            logger.exception("etcd watch failed, retrying in %.1f s", backoff)
        if stop.wait(backoff):
            return
        backoff = min(backoff * 2, WATCH_BACKOFF_MAX)


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


def _check_one(each: Balancer, instance: Instance, timeout: float) -> None:
    try:
        passed, reason = check_instance(instance.url, timeout)
        each.checked(instance, passed=passed, reason=reason)
    finally:
        instance.checking = False


def check_due(executor: ThreadPoolExecutor, now: float) -> float:
    """Start the checks that are due (each instance on its own interval), without waiting for them;
    the monotonic time the next one is due."""
    default_interval, default_timeout = settings.UPSTREAM_CHECK_INTERVAL, settings.UPSTREAM_CHECK_TIMEOUT
    with _registry_lock:
        current = list(_balancers.values())
    next_due = now + default_interval
    for each in current:
        for instance in each.instances:
            if instance.next_check_at <= now and not instance.checking:
                instance.checking = True
                instance.next_check_at = now + (instance.check_interval or default_interval)
                executor.submit(_check_one, each, instance, instance.check_timeout or default_timeout)
            next_due = min(next_due, instance.next_check_at)
    return next_due


def _check_forever() -> None:
    refresh_at = 0.0
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="upstream-check") as executor:
        while True:
            interval = settings.UPSTREAM_CHECK_INTERVAL
            if interval <= 0:
                time.sleep(5.0)
                continue
            now = time.monotonic()
            next_due = now + interval
            try:
                if now >= refresh_at:  # the periodic re-read: the only one without etcd's watch
                    refresh_at = now + interval
                    with _registry_lock:
                        current = list(_balancers.values())
                    for each in current:
                        try:
                            each.refresh()
                        except Exception:  # a discovery source failing keeps the instances known so far
                            logger.exception("could not refresh the instances of %s", each.service)
                next_due = min(check_due(executor, now), refresh_at)
            except Exception:  # the checker must outlive any one bad round
                logger.exception("upstream health check round failed")
            # never busier than every 50 ms, whatever an instance registered
            _wake.wait(max(next_due - time.monotonic(), 0.05))
            _wake.clear()
