"""The client one service uses to call another.

Every call carries the request id and a service assertion acting for the same user, has connect and read
timeouts, and is retried only where that is safe: connection failures (nothing was sent) for any method,
and 502/503/504 or read errors only for idempotent methods. Failures surface as the upstream errors of
:mod:`common.errors`, so a view never has to translate them.

Calls resolve through the same machinery as the gateway's: a :class:`common.balancing.Balancer` over the
called service's instances (least-outstanding; an instance the client cannot connect to is ejected for
``eject_seconds`` and a retry goes to another one) and a :class:`common.breakers.Breaker` per called
service; while it is open calls fail at once with 503 ``upstream_unavailable``. Unlike the gateway, which
feeds its breaker every attempt, a call feeds it once, with its outcome after the retries (as this client
always did): the breaker judges whether the service can be used, the balancer judges its instances, so a
dead instance whose calls succeed on a retry elsewhere opens nothing, and "5 failures" means 5 failed calls
for the callers' thresholds (the order saga's).

:func:`service_client` builds one wired to the calling service's settings (discovery, health checks,
breaker thresholds, Redis-shared breaker state) and tracks it, so the service's ``/metrics`` reports its
breaker state and instance health (common/common/metrics.py).

A request's calls share its deadline: :class:`RequestDeadlineMiddleware` gives each incoming request
``SERVICE_REQUEST_DEADLINE`` seconds (set below the gateway's own timeout), and every call made while it
runs, its retries included, ends by then (:func:`call_deadline`): a slow service makes the caller answer
in time with a 504 (or, for the order saga's charge, an unknown outcome it settles later) instead of the
gateway giving up on a request that then goes on to change things. Calls outside a request (the saga's
background, Celery) have no deadline but their own timeouts.
"""

from __future__ import annotations

import contextlib
import functools
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import requests
from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ProtocolError

from common import breakers, discovery
from common.balancing import (
    DEFAULT_POLICY,
    Balancer,
    HealthChecker,
    Instance,
    InstanceSource,
    RegistryWatcher,
    StaticInstances,
)
from common.errors import UpstreamTimeout, UpstreamUnavailable
from common.internal_auth import HEADER as ASSERTION_HEADER
from common.internal_auth import Principal, mint_assertion
from common.request_id import HEADER as REQUEST_ID_HEADER
from common.request_id import current_or_new_request_id

RETRIED_STATUSES = frozenset({502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})  # RFC 9110 9.2.2
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_RESET_SECONDS = 10.0

# time.monotonic() by which the calls made in this context must end; None: no deadline.
_deadline: ContextVar[float | None] = ContextVar("service_call_deadline", default=None)


@contextlib.contextmanager
def call_deadline(seconds: float | None) -> Iterator[None]:
    """Every ServiceClient call made inside ends within ``seconds`` from now (None: no deadline), retries
    included; an earlier deadline already in force is kept."""
    ends = None if seconds is None else time.monotonic() + seconds
    current = _deadline.get()
    if current is not None and (ends is None or current < ends):
        ends = current
    token = _deadline.set(ends)
    try:
        yield
    finally:
        _deadline.reset(token)


class RequestDeadlineMiddleware:
    """Gives each request ``SERVICE_REQUEST_DEADLINE`` seconds (default 10) for the calls it makes to other
    services."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        with call_deadline(float(_setting("SERVICE_REQUEST_DEADLINE", 10.0))):
            return self.get_response(request)


class ServiceClient:
    def __init__(
        self,
        *,
        base_url: str,
        caller: str,
        audience: str,
        secret: str,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        retries: int = 2,
        balancer: Balancer | None = None,
        breaker: breakers.Breaker | None = None,
        eject_seconds: float = 10.0,
        backoff_factor: float = 0.1,
    ) -> None:
        """``balancer`` picks the instance of each call (service discovery), by default among the URLs of
        ``base_url`` (one, or a comma-separated list); ``breaker`` refuses calls fast while the service
        keeps failing, by default a local one (5 failures, 10 s)."""
        self.base_url = base_url.rstrip("/")
        self.balancer = balancer or Balancer(audience, StaticInstances(discovery.parse_urls(base_url)))
        self.breaker = breaker or breakers.Breaker(
            audience, failures=DEFAULT_BREAKER_FAILURES, reset_timeout=DEFAULT_BREAKER_RESET_SECONDS
        )
        self.caller = caller
        self.audience = audience
        self._secret = secret
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.eject_seconds = eject_seconds
        self.backoff_factor = backoff_factor
        self.session = requests.Session()
        # Reading proxy settings from the environment on every call costs a lot of CPU and has no use
        # between services on a private network.
        self.session.trust_env = False
        # No retries inside urllib3: they are made here, each on an instance the balancer picks.
        self.session.mount("http://", HTTPAdapter(pool_maxsize=32, max_retries=0))
        self.session.mount("https://", HTTPAdapter(pool_maxsize=32, max_retries=0))

    def request(
        self,
        method: str,
        path: str,
        *,
        acting_for: Principal | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        request_id = current_or_new_request_id()
        assertion = mint_assertion(
            issuer=self.caller,
            audience=self.audience,
            secret=self._secret,
            user_id=acting_for.id if acting_for else None,
            is_staff=acting_for.is_staff if acting_for else False,
            request_id=request_id,
        )
        all_headers = {
            "Accept": "application/json",
            ASSERTION_HEADER: assertion,
            REQUEST_ID_HEADER: request_id,
            **(headers or {}),
        }
        try:
            probe = self.breaker.admit()
        except breakers.BreakerOpen as exc:
            raise UpstreamUnavailable(details={"service": self.audience, "breaker": "open"}) from exc
        try:
            response = self._send(method, path, json=json, params=params, headers=all_headers)
        except (UpstreamTimeout, UpstreamUnavailable):
            self.breaker.record(success=False, probe=probe)
            raise
        except BaseException:  # anything unforeseen must not leak a probe slot
            self.breaker.cancel(probe)
            raise
        self.breaker.record(success=response.status_code < 500, probe=probe)
        return response

    def _send(
        self, method: str, path: str, *, json: Any, params: dict[str, Any] | None, headers: dict[str, str]
    ) -> requests.Response:
        """The call with its retries, each on an instance not tried yet while there is one."""
        idempotent = method.upper() in IDEMPOTENT_METHODS
        deadline = _deadline.get()
        tried: list[Instance] = []
        retried = 0
        while True:
            timeout = self._timeout_within(deadline)
            instance = self.balancer.acquire(exclude=tried)
            tried.append(instance)
            failure: Exception | None = None
            try:
                response = self.session.request(
                    method,
                    f"{instance.url}{path}",
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                failure, nothing_sent = self._failure(exc, instance)
                failure.__cause__ = exc
                if not (nothing_sent or idempotent) or retried >= self.retries:
                    raise failure from exc
            else:
                if response.status_code not in RETRIED_STATUSES or not idempotent or retried >= self.retries:
                    return response  # the last answer, even a 503, once the retries are spent
            finally:
                self.balancer.release(instance)  # requests has read the whole body by now
            retried += 1
            if not self._pause(retried, deadline):
                # No time left for another attempt before the deadline: this one's outcome stands.
                if failure is not None:
                    raise failure
                return response
            if failure is None:
                response.close()

    def _timeout_within(self, deadline: float | None) -> tuple[float, float]:
        """This attempt's (connect, read) timeouts, cut to what is left of the deadline."""
        if deadline is None:
            return self.timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout(details={"service": self.audience, "reason": "deadline"})
        connect, read = self.timeout
        return min(connect, remaining), min(read, remaining)

    def _failure(self, exc: requests.RequestException, instance: Instance) -> tuple[Exception, bool]:
        """The error to raise for a failed attempt, and whether nothing reached the service (then any
        method may be retried). A connection that could not be made also ejects the instance."""
        details = {"service": self.audience}
        if isinstance(exc, requests.ConnectTimeout):
            self.balancer.eject(instance, seconds=self.eject_seconds, reason="connect timeout")
            return UpstreamTimeout(details=details), True
        if isinstance(exc, requests.Timeout):
            return UpstreamTimeout(details=details), False
        if isinstance(exc, requests.ConnectionError):
            if _broke_mid_exchange(exc):
                return UpstreamUnavailable(details=details), False
            self.balancer.eject(instance, seconds=self.eject_seconds, reason="unreachable")
            return UpstreamUnavailable(details=details), True
        return UpstreamUnavailable(details=details), False

    def _pause(self, retry: int, deadline: float | None) -> bool:
        """Wait before retry number ``retry``: urllib3's backoff, which this client used before it retried by
        itself (the first retry at once, then ``backoff_factor * 2 ** (retry - 1)`` plus up to 0.1 s of
        jitter). False, without waiting, when the deadline would pass before the retry could start."""
        pause = self.backoff_factor * 2 ** (retry - 1) + random.uniform(0, 0.1) if retry > 1 else 0.0  # noqa: S311
        if deadline is not None and time.monotonic() + pause >= deadline:
            return False
        if pause:
            time.sleep(pause)
        return True


def _broke_mid_exchange(exc: requests.ConnectionError) -> bool:
    """requests raises a refused connection as ConnectionError(MaxRetryError(NewConnectionError)), and a
    connection that broke after the request was (perhaps) sent as ConnectionError(ProtocolError or
    OSError): only the first is known to have sent nothing."""
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, ProtocolError | OSError) and not isinstance(cause, MaxRetryError)


# Clients wired to the calling service's settings --------------------------------------------------------


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


# The clients this process calls other services through, by the service they call; the latest one made
# wins (tests make fresh ones). The health checker, the breaker sync and the metrics look at these.
_tracked: dict[str, ServiceClient] = {}
_tracked_lock = threading.Lock()


def tracked_clients() -> list[ServiceClient]:
    with _tracked_lock:
        return list(_tracked.values())


def _tracked_balancers() -> list[Balancer]:
    return [client.balancer for client in tracked_clients()]


_checker = HealthChecker(
    name="service-client-health",
    balancers=_tracked_balancers,
    interval=lambda: float(_setting("SERVICE_CHECK_INTERVAL", 5.0)),
    timeout=lambda: float(_setting("SERVICE_CHECK_TIMEOUT", 1.0)),
    refresh_interval=lambda: float(_setting("DISCOVERY_REFRESH_SECONDS", 5.0)),
)
_watcher = RegistryWatcher(balancers=_tracked_balancers, checker=_checker)


@functools.cache
def _shared_states(url: str, prefix: str) -> breakers.SharedStates:
    return breakers.SharedStates(url, prefix)


def shared_states() -> breakers.SharedStates | None:
    """Where this service's processes share their clients' breaker states: Redis at
    ``SERVICE_BREAKER_REDIS_URL`` (under ``SERVICE_BREAKER_REDIS_PREFIX``), or nowhere (per process)."""
    url = str(_setting("SERVICE_BREAKER_REDIS_URL", ""))
    if not url:
        return None
    prefix = str(_setting("SERVICE_BREAKER_REDIS_PREFIX", "") or f"{settings.SERVICE_NAME}:breaker")
    return _shared_states(url, prefix)


def sync_breakers() -> None:
    breakers.sync_once(shared_states(), {client.audience: client.breaker for client in tracked_clients()})


_sync = breakers.BreakerSync(
    name="service-client-breaker-sync",
    sync=sync_breakers,
    interval=lambda: float(_setting("SERVICE_BREAKER_SYNC_INTERVAL", 1.0)),
)

ClientT = TypeVar("ClientT", bound=ServiceClient)


def instance_source(audience: str, base_url: str) -> InstanceSource:
    """The called service's instances through ``DISCOVERY_BACKEND`` (static, dns, etcd), falling back to
    ``base_url`` (one URL or a comma-separated list) while the registry knows none."""
    registry = discovery.make_registry(
        backend=str(_setting("DISCOVERY_BACKEND", "static")),
        configured={audience: base_url},
        etcd_url=str(_setting("ETCD_URL", "")),
        etcd_prefix=str(_setting("ETCD_PREFIX", discovery.DEFAULT_PREFIX)),
        dns_server=str(_setting("DISCOVERY_DNS_SERVER", "")),
        timeout=float(_setting("SERVICE_CONNECT_TIMEOUT", 2.0)),
    )
    return discovery.ServiceInstances(registry, audience, fallback=base_url)


def service_client(
    *,
    audience: str,
    base_url: str,
    failures: int | Callable[[], int] | None = None,
    reset_timeout: float | Callable[[], float] | None = None,
    client_class: type[ClientT] = ServiceClient,  # type: ignore[assignment]
) -> ClientT:
    """A client of ``audience`` for this service (``SERVICE_NAME``), from its settings:

    - instances through service discovery (:func:`instance_source`), balanced by
      ``SERVICE_LOAD_BALANCER_POLICY``, checked every ``SERVICE_CHECK_INTERVAL`` seconds (0: never; then
      only passive ejections, for ``SERVICE_EJECT_SECONDS``) with ``SERVICE_CHECK_TIMEOUT``, re-read every
      ``DISCOVERY_REFRESH_SECONDS`` and, with etcd, as soon as they change;
    - a breaker opened by ``failures`` (default ``SERVICE_BREAKER_FAILURES``) for ``reset_timeout``
      (``SERVICE_BREAKER_RESET_SECONDS``), values or callables read on each use, shared across the
      service's processes through ``SERVICE_BREAKER_REDIS_URL`` when set;
    - ``SERVICE_CONNECT_TIMEOUT`` / ``SERVICE_READ_TIMEOUT``.

    Build it on first use (never at import time) and reuse it for its connection pool; the newest client
    of each service is the one reported in ``/metrics``."""
    shared = shared_states()
    client = client_class(
        base_url=discovery.parse_urls(base_url)[0],
        caller=settings.SERVICE_NAME,
        audience=audience,
        secret=settings.INTERNAL_AUTH_SECRET,
        connect_timeout=float(_setting("SERVICE_CONNECT_TIMEOUT", 2.0)),
        read_timeout=float(_setting("SERVICE_READ_TIMEOUT", 5.0)),
        balancer=Balancer(
            audience, instance_source(audience, base_url), str(_setting("SERVICE_LOAD_BALANCER_POLICY", DEFAULT_POLICY))
        ),
        breaker=breakers.Breaker(
            audience,
            failures=failures if failures is not None else int(_setting("SERVICE_BREAKER_FAILURES", 5)),
            reset_timeout=(
                reset_timeout if reset_timeout is not None else float(_setting("SERVICE_BREAKER_RESET_SECONDS", 10.0))
            ),
            probes=int(_setting("SERVICE_BREAKER_HALF_OPEN_PROBES", 1)),
            shared=shared,
        ),
        eject_seconds=float(_setting("SERVICE_EJECT_SECONDS", 10.0)),
    )
    with _tracked_lock:
        _tracked[audience] = client
    _checker.start()
    _checker.wake.set()  # check the new instances now, with the settings of now
    if _setting("DISCOVERY_BACKEND", "static") == "etcd":
        _watcher.follow(
            str(settings.ETCD_URL), str(_setting("ETCD_PREFIX", discovery.DEFAULT_PREFIX)),
            timeout=float(_setting("SERVICE_CHECK_TIMEOUT", 1.0)),
        )  # fmt: skip
    if shared is not None:
        _sync.start()
    return client


def forget_clients() -> None:
    """Stop tracking the clients made so far (tests)."""
    with _tracked_lock:
        _tracked.clear()
    _shared_states.cache_clear()
