"""A circuit breaker per upstream service: CLOSED, OPEN, HALF_OPEN.

- CLOSED: calls go through; ``BREAKER_FAILURES`` consecutive failures (connection errors, timeouts, 5xx
  answers) open it.
- OPEN: calls are refused at once (the gateway answers 503 ``upstream_unavailable`` with Retry-After)
  for ``BREAKER_RESET_TIMEOUT`` seconds.
- HALF_OPEN: after the cool-down at most ``BREAKER_HALF_OPEN_PROBES`` calls go through at a time; the
  first success closes the breaker, a failure opens it for another cool-down.

Shared state: with ``REDIS_URL`` set, every transition to OPEN or CLOSED is written to Redis
(``<BREAKER_REDIS_PREFIX>:<service>`` = ``open|closed:<time>``) and each worker process reads all
services' states every ``BREAKER_SYNC_INTERVAL`` seconds in a background thread, adopting a newer one;
half-open probes take a slot from a Redis counter, so their number is bounded across workers too. A
closed breaker therefore costs no Redis round trip per request. Without REDIS_URL (embedded mode) each
process keeps its own state. A Redis failure never fails a request: the breaker goes on with its local
state and retries Redis a few seconds later.

Why not pybreaker: measured here (pybreaker 1.4.1, Redis on loopback), ``CircuitBreaker.call`` holds one
lock for the whole guarded call, so 8 threads each making a 20 ms call took 164 ms instead of 20 (calls
through a breaker are serialised per process; upstream PRs #40, #41, #57 and #77 to change this were
closed unmerged), and its Redis storage makes two round trips on every successful call (~300 µs, about
the budget of the whole gateway hop). It also has no bound on concurrent half-open probes. The state
machine itself is small, and this one keeps the common path to one attribute read.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from typing import Any

import redis
from django.conf import settings

from configcenter import runtime as runtime_config

logger = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
REDIS_TIMEOUT = 0.25  # seconds; a slow Redis delays a transition, never a normal request
REDIS_RETRY_AFTER = 5.0  # seconds without Redis after it failed


class BreakerOpen(Exception):
    def __init__(self, service: str, retry_after: int) -> None:
        super().__init__(f"the circuit breaker of {service} is open")
        self.service = service
        self.retry_after = retry_after


class SharedStates:
    """Breaker states in Redis, for all gateway workers and replicas. Every method degrades to 'no
    shared state' when Redis fails."""

    def __init__(self, url: str, prefix: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)
        self._prefix = prefix
        self._down_until = 0.0

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        logger.warning("circuit breaker state store unavailable, using local state: %s", exc)
        self._down_until = time.monotonic() + REDIS_RETRY_AFTER

    def publish(self, service: str, state: str, changed_at: float) -> None:
        if not self._usable():
            return
        try:
            self._redis.set(f"{self._prefix}:{service}", f"{state}:{changed_at!r}")
        except redis.RedisError as exc:
            self._failed(exc)

    def read(self, services: list[str]) -> dict[str, tuple[str, float]]:
        if not self._usable():
            return {}
        try:
            values = self._redis.mget([f"{self._prefix}:{service}" for service in services])
        except redis.RedisError as exc:
            self._failed(exc)
            return {}
        states = {}
        for service, value in zip(services, values, strict=True):
            if value:
                state, _, changed_at = value.decode().partition(":")
                states[service] = (state, float(changed_at))
        return states

    def take_probe(self, service: str, opened_at: float, limit: int, ttl: float) -> bool:
        """One of ``limit`` probe slots for this opening, across all workers; True when Redis fails."""
        if not self._usable():
            return True
        key = f"{self._prefix}:{service}:probes:{opened_at!r}"
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, max(1, math.ceil(ttl)))
                taken, _ = pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)
            return True
        return int(taken) <= limit

    def healthy(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False


class Breaker:
    def __init__(
        self, service: str, *, failures: int, reset_timeout: float, probes: int, shared: SharedStates | None
    ) -> None:
        self.service = service
        self._default_failures = failures  # the settings' values, when the config center has none
        self._default_reset_timeout = reset_timeout
        self._max_probes = probes
        self._shared = shared
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._changed_at = 0.0  # wall-clock time, comparable across processes
        self._probes = 0

    # Read through the config center on each use (an in-memory lookup), so a saved version applies to
    # the breakers that already exist, without a restart.
    @property
    def _max_failures(self) -> int:
        return int(runtime_config.value("breaker.failures") or self._default_failures)

    @property
    def _reset_timeout(self) -> float:
        return float(runtime_config.value("breaker.reset_timeout") or self._default_reset_timeout)

    @property
    def state(self) -> str:
        if self._state == OPEN and time.time() >= self._changed_at + self._reset_timeout:
            return HALF_OPEN  # the cool-down is over: the next call is a probe
        return self._state

    def admit(self) -> bool:
        """Raise :class:`BreakerOpen`, or return whether this call is a half-open probe (report its
        outcome with :meth:`record` in any case)."""
        if self._state == CLOSED:
            return False
        with self._lock:
            now = time.time()
            if self._state == CLOSED:
                return False
            if self._state == OPEN:
                reopens = self._changed_at + self._reset_timeout
                if now < reopens:
                    raise BreakerOpen(self.service, max(1, math.ceil(reopens - now)))
                self._state = HALF_OPEN
                self._probes = 0
                logger.info("circuit breaker of %s half-open: probing", self.service)
            if self._probes >= self._max_probes:
                raise BreakerOpen(self.service, 1)
            if self._shared and not self._shared.take_probe(
                self.service, self._changed_at, self._max_probes, self._reset_timeout * 2
            ):
                raise BreakerOpen(self.service, 1)
            self._probes += 1
            return True

    def record(self, *, success: bool, probe: bool) -> None:
        if success and not probe:
            if self._failures:
                self._failures = 0
            return
        with self._lock:
            if probe:
                self._probes = max(0, self._probes - 1)
            if success:
                if self._state == HALF_OPEN and probe:
                    self._change(CLOSED)
            elif self._state == HALF_OPEN and probe:
                self._change(OPEN)
            elif self._state == CLOSED:
                self._failures += 1
                if self._failures >= self._max_failures:
                    self._change(OPEN)

    def cancel(self, probe: bool) -> None:
        """An admitted call that never reached the service (e.g. its deadline was already spent)."""
        if probe:
            with self._lock:
                self._probes = max(0, self._probes - 1)

    def _change(self, state: str) -> None:
        self._state = state
        self._failures = 0
        self._changed_at = time.time()
        logger.warning("circuit breaker of %s %s", self.service, state)
        if self._shared:
            self._shared.publish(self.service, state, self._changed_at)

    def adopt(self, state: str, changed_at: float) -> None:
        """A newer state written by another worker."""
        with self._lock:
            if changed_at <= self._changed_at or state not in (OPEN, CLOSED):
                return
            if state != self._state:
                logger.info("circuit breaker of %s %s (shared state)", self.service, state)
            self._state = state
            self._failures = 0
            self._changed_at = changed_at


_breakers: dict[str, Breaker] = {}
_registry_lock = threading.Lock()
_sync_started = False


@functools.cache
def _shared_states(url: str, prefix: str) -> SharedStates:
    return SharedStates(url, prefix)


def shared_states() -> SharedStates | None:
    url = settings.BREAKER_REDIS_URL
    return _shared_states(url, settings.BREAKER_REDIS_PREFIX) if url else None


def breaker(service: str) -> Breaker:
    found = _breakers.get(service)
    if found is not None:
        return found
    with _registry_lock:
        found = _breakers.get(service)
        if found is None:
            shared = shared_states()
            found = _breakers[service] = Breaker(
                service,
                failures=settings.BREAKER_FAILURES,
                reset_timeout=settings.BREAKER_RESET_TIMEOUT,
                probes=settings.BREAKER_HALF_OPEN_PROBES,
                shared=shared,
            )
            if shared is not None:
                _start_sync()
    return found


def states() -> dict[str, str]:
    """Each service's breaker: ``closed``, ``open`` or ``half_open`` (for /health and metrics)."""
    return {service: breaker(service).state for service in settings.UPSTREAMS}


def store_status() -> dict[str, Any]:
    shared = shared_states()
    if shared is None:
        return {"store": "local"}
    return {"store": "redis", "status": "ok" if shared.healthy() else "unavailable"}


def reset() -> None:
    """Forget every breaker (tests)."""
    with _registry_lock:
        _breakers.clear()
    _shared_states.cache_clear()


def sync_once() -> None:
    shared = shared_states()
    if shared is None:
        return
    current = dict(_breakers)
    for service, (state, changed_at) in shared.read(list(current)).items():
        current[service].adopt(state, changed_at)


def _start_sync() -> None:
    # gunicorn loads the application in each worker (no --preload), so this runs once per worker.
    global _sync_started
    if _sync_started:
        return
    _sync_started = True
    threading.Thread(target=_sync_forever, name="breaker-sync", daemon=True).start()


def _sync_forever() -> None:
    while True:
        time.sleep(settings.BREAKER_SYNC_INTERVAL)
        try:
            sync_once()
        except Exception:  # the sync must outlive any one bad round
            logger.exception("circuit breaker sync failed")
