"""Rate limits per route (policies in proxy/routes.py), counted with the `limits` library.

Where the counts live:
- ``REDIS_URL`` set: `limits`' Redis storage, whose increment is one atomic Lua script (INCRBY, and
  EXPIRE on the first hit), so the count is exact across every worker of every gateway replica; the
  gateway sends that script over a connection kept per thread, or, on a worker's event loop
  (:func:`consume_async`), over that loop's own connections, awaiting the answer
  (proxy/ratelimit_storage.py).
- embedded mode: proxy/ratelimit_storage.py, a `limits` storage in a SQLite file under VAR_DIR, atomic
  across the gateway's worker processes (an in-memory store would grant the quota once per worker).
- while that store is unreachable: a route whose policy fails open counts in `limits`' per-process
  memory storage (the same limit, per worker), one that fails closed answers 503. After a failure the
  store is left alone for ``RATE_LIMIT_STORE_RETRY_AFTER`` seconds (then one request probes it), and
  each call is bounded by ``RATE_LIMIT_STORE_TIMEOUT``, so an outage neither hangs requests nor costs
  each of them a connection attempt.

Strategy: a fixed window, one storage round trip per request. `limits`' FixedWindowRateLimiter would
need three (increment, then count and TTL for the headers), so the increment's result is used as the
count directly, and the window is aligned to the clock rather than started by the first hit: its end,
the ``t`` of the RateLimit header and the 429's Retry-After, is then known without asking the store.
Each client's windows are offset by a hash of its key, so clients' quotas do not all renew at the same
second. A fixed window lets a client spend up to twice the limit across a window boundary; the moving
window avoids that at the price of a list of timestamps per client and a second round trip for the
headers, which the gateway's hot path cannot afford (docs: PERFORMANCE.md).

Every response of a limited route carries ``RateLimit-Policy`` and ``RateLimit`` as in the IETF httpapi
draft (draft-ietf-httpapi-ratelimit-headers, structured fields): ``"default";q=600;w=60`` and
``"default";r=42;t=17``; a 429 also ``Retry-After`` and the error code ``rate_limited``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import limits
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponseBase
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.errors import ApplicationError
from configcenter import runtime as runtime_config
from proxy.client_address import client_address, rate_limit_identity
from proxy.ratelimit_storage import RedisCounterStorage, SQLiteStorage
from proxy.routes import RATE_LIMIT_POLICIES, Route

logger = logging.getLogger(__name__)


class RateLimited(ApplicationError):
    status_code = 429
    code = "rate_limited"
    message = "Too many requests; retry after the number of seconds in Retry-After."


class RateLimitUnavailable(ApplicationError):
    status_code = 503
    code = "rate_limit_unavailable"
    message = "This route is unavailable while its rate limits cannot be checked; retry shortly."


@dataclass(frozen=True)
class Quota:
    """One request's standing against its policy, after it was counted."""

    policy: str
    limit: int
    window: int  # seconds
    remaining: int
    reset: int  # seconds until the window ends (or, unavailable, until the store is tried again)
    exceeded: bool
    unavailable: bool = False

    def enforce(self) -> None:
        if self.unavailable:
            raise RateLimitUnavailable(details={"policy": self.policy, "retry_after": self.reset})
        if self.exceeded:
            raise RateLimited(details={"policy": self.policy, "limit": self.limit, "retry_after": self.reset})

    def annotate(self, response: HttpResponseBase) -> None:
        response["RateLimit-Policy"] = f'"{self.policy}";q={self.limit};w={self.window}'
        response["RateLimit"] = f'"{self.policy}";r={self.remaining};t={self.reset}'
        limited_here = response.status_code == 429 or (self.unavailable and response.status_code == 503)
        if limited_here and not response.has_header("Retry-After"):  # a service's own 429 keeps its value
            response["Retry-After"] = str(self.reset)


def consume(request: HttpRequest, route: Route, *, user_id: int | None) -> Quota | None:
    """Count this request against its route's policy (None: the route is not limited). Never raises:
    ``Quota.enforce`` turns the outcome into the 429 or 503."""
    counter = _Counter.of(request, route, user_id)
    return counter.quota(_stores.shared_incr(counter.key, counter.window)) if counter is not None else None


async def consume_async(request: HttpRequest, route: Route, *, user_id: int | None) -> Quota | None:
    """:func:`consume` on the gateway's event loop: the shared store's answer is awaited, so the worker
    answers other requests meanwhile."""
    counter = _Counter.of(request, route, user_id)
    if counter is None:
        return None
    return counter.quota(await _stores.shared_incr_async(counter.key, counter.window))


@dataclass(frozen=True)
class _Counter:
    """Which counter a request goes to, and how its count reads against the policy."""

    policy: str
    on_store_failure: str
    limit: int
    window: int
    reset: int
    key: str

    @classmethod
    def of(cls, request: HttpRequest, route: Route, user_id: int | None) -> _Counter | None:
        if route.rate_limit is None:
            return None
        policy = RATE_LIMIT_POLICIES[route.rate_limit]
        # The config center's rate for this policy if it has one (an in-memory lookup), else the setting.
        item = _rate(runtime_config.value(f"ratelimit.{route.rate_limit}") or getattr(settings, policy.rate_setting))
        limit, window = item.amount, item.get_expiry()
        if user_id is not None and policy.key == "user_or_address":
            identity = f"user:{user_id}"
        else:
            identity = f"addr:{rate_limit_identity(client_address(request.META))}"
        elapsed = wall_clock() + zlib.crc32(identity.encode()) % window
        reset = max(1, math.ceil(window - elapsed % window))
        key = item.key_for(route.rate_limit, str(int(elapsed // window)), identity)
        return cls(route.rate_limit, policy.on_store_failure, limit, window, reset, key)

    def quota(self, count: int | None) -> Quota:
        """The standing after the shared store counted ``count`` (None: it could not)."""
        if count is None:
            if self.on_store_failure == "closed":
                return Quota(
                    self.policy, self.limit, self.window, 0, _stores.retry_in(), exceeded=False, unavailable=True
                )
            count = _stores.local().incr(self.key, self.window)
        return Quota(self.policy, self.limit, self.window, max(0, self.limit - count), self.reset, count > self.limit)


def store_health() -> dict[str, Any]:
    """For /health: which store counts the limits, whether it answers (checked now), and, while requests
    are leaving it alone after a failure, for how much longer."""
    backend = "redis" if settings.RATE_LIMIT_REDIS_URL else "sqlite"
    healthy = _stores.check()
    fallback_for = _stores.fallback_for()
    report: dict[str, Any] = {"status": "ok" if healthy else "down", "backend": backend}
    if fallback_for is not None:
        report["fallback_for_seconds"] = fallback_for
    if not healthy or fallback_for is not None:
        # what the policies do without the store (proxy/routes.py)
        report["fail_open"] = "per-process limits"
        report["fail_closed"] = "503 rate_limit_unavailable"
    return report


def wall_clock() -> float:
    """The time the windows are aligned to (``time.time``; tests hold it still, so that a test's requests
    are never split across a window's end)."""
    return time.time()


@lru_cache(maxsize=32)
def _rate(rate: str) -> limits.RateLimitItem:
    return limits.parse(rate)


class _Stores:
    """The shared store, created on first use in each worker process, its failure state, and the
    per-process fallback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shared: Storage | None = None
        self._local: MemoryStorage | None = None
        self._down_until = 0.0  # time.monotonic(); 0: believed up

    def shared(self) -> Storage:
        if self._shared is None:
            with self._lock:
                if self._shared is None:
                    try:
                        self._shared = _create_shared_store()
                    except Exception as exc:  # a malformed URL, say: the route's fallback, not a 500
                        raise StorageError(exc) from exc
        return self._shared

    def local(self) -> MemoryStorage:
        if self._local is None:
            with self._lock:
                if self._local is None:
                    self._local = MemoryStorage()
        return self._local

    def shared_incr(self, key: str, expiry: int) -> int | None:
        """The count after this increment, or None while the shared store is unusable."""
        if not self._worth_trying():
            return None
        try:
            count = self.shared().incr(key, expiry)
        except StorageError as exc:
            self._mark_down(exc)
            return None
        self._down_until = 0.0
        return count

    async def shared_incr_async(self, key: str, expiry: int) -> int | None:
        """:meth:`shared_incr` on an event loop: Redis's answer awaited. The SQLite file of embedded mode
        is counted inline, as on a thread: a local write of microseconds costs less than a thread hop."""
        if not self._worth_trying():
            return None
        try:
            store = self.shared()
            if isinstance(store, RedisCounterStorage):
                count = await store.incr_async(key, expiry)
            else:
                count = store.incr(key, expiry)
        except StorageError as exc:
            self._mark_down(exc)
            return None
        self._down_until = 0.0
        return count

    def _worth_trying(self) -> bool:
        """False while the store is left alone after a failure. Once that time is up, the request asking
        probes it, and the others keep the fallback meanwhile."""
        if self._down_until:
            now = time.monotonic()
            if now < self._down_until:
                return False
            self._down_until = now + settings.RATE_LIMIT_STORE_RETRY_AFTER
        return True

    def retry_in(self) -> int:
        return max(1, math.ceil(self._down_until - time.monotonic()))

    def check(self) -> bool:
        """Whether the shared store answers now, for /health: a report, which leaves the requests' failure
        state alone both ways. A failed probe must not switch fail-closed routes (sign-in) to 503 for
        RATE_LIMIT_STORE_RETRY_AFTER: one slow ping from a public endpoint would take sign-in down in this
        worker (and with Redis the probe, limits' PING, does not even go over the connections the requests
        count on). A successful one must not end the requests' back-off either: /health, which anyone may
        call, would then set how often requests try a flapping store (every second, not every
        RETRY_AFTER), each try a store timeout for a request. The requests probe the store themselves, one
        request after each back-off (``shared_incr``)."""
        try:
            return bool(self.shared().check())
        except StorageError:
            return False

    def fallback_for(self) -> int | None:
        """Seconds until requests try the shared store again after a failure; None while they use it."""
        down_until = self._down_until
        if not down_until or time.monotonic() >= down_until:
            return None
        return max(1, math.ceil(down_until - time.monotonic()))

    def _mark_down(self, exc: Exception | None) -> None:
        if not self._down_until or time.monotonic() >= self._down_until:
            logger.warning("rate-limit store unavailable, using the per-route fallback: %s", exc or "check failed")
        self._down_until = time.monotonic() + settings.RATE_LIMIT_STORE_RETRY_AFTER

    def reset(self) -> None:
        with self._lock:
            self._shared = None
            self._local = None
            self._down_until = 0.0


def _create_shared_store() -> Storage:
    timeout = settings.RATE_LIMIT_STORE_TIMEOUT
    if settings.RATE_LIMIT_REDIS_URL:
        return RedisCounterStorage(
            settings.RATE_LIMIT_REDIS_URL,
            key_prefix=settings.RATE_LIMIT_KEY_PREFIX,
            wrap_exceptions=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # redis-py retries 3 times by default: here the fallback is the retry
        )
    return SQLiteStorage(
        path=settings.RATE_LIMIT_SQLITE_PATH,
        key_prefix=settings.RATE_LIMIT_KEY_PREFIX,
        # Waiting for the file lock only happens while other workers write (microseconds each), unless a
        # loaded machine deschedules one of them holding it: wait longer than for a network store rather
        # than fall back to per-process counts. A local file is never "down" the way a server is, and a
        # wait taken for an outage would hand this worker's clients fresh per-process quotas for
        # RATE_LIMIT_STORE_RETRY_AFTER seconds: seen with a 1 s wait on a saturated 2-core machine (one
        # request past a burst's limit).
        timeout=max(timeout, 5.0),
        wrap_exceptions=True,
    )


_stores = _Stores()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    """Tests change the store's settings; each change starts from a fresh store."""
    if setting.startswith("RATE_LIMIT_"):
        _stores.reset()
