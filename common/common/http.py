"""The client one service uses to call another.

Every call carries the request id and a service assertion acting for the same user, has connect and read
timeouts, and is retried only where that is safe: connection failures (nothing was sent) for any method,
and 502/503/504 or read errors only for idempotent methods. Failures surface as the upstream errors of
:mod:`common.errors`, so a view never has to translate them.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ReadTimeoutError
from urllib3.util.retry import Retry

from common.errors import UpstreamTimeout, UpstreamUnavailable
from common.internal_auth import HEADER as ASSERTION_HEADER
from common.internal_auth import Principal, mint_assertion
from common.request_id import HEADER as REQUEST_ID_HEADER
from common.request_id import current_or_new_request_id

if TYPE_CHECKING:
    from common.discovery import DiscoveredBaseUrl


class CircuitBreaker:
    """Consecutive-failure breaker for one called service, per process: ``failures`` connection errors,
    timeouts or 5xx answers in a row open it; while open, calls fail at once with UpstreamUnavailable for
    ``reset_seconds``; then one call at a time probes (half open) and its success closes it. Kept this
    small on purpose (the gateway's proxy/breakers.py is the tuned, Redis-shared one; pybreaker serialises
    every guarded call behind one lock, see there)."""

    def __init__(self, *, failures: int = 5, reset_seconds: float = 10.0) -> None:
        self.failures = failures
        self.reset_seconds = reset_seconds
        self._lock = threading.Lock()
        self._count = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "open" if time.monotonic() - self._opened_at < self.reset_seconds else "half_open"

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        with self._lock:
            if self.state == "open" or self._probing:
                return False
            self._probing = True
            return True

    def record(self, *, ok: bool) -> None:
        with self._lock:
            self._probing = False
            if ok:
                self._count, self._opened_at = 0, None
                return
            self._count += 1
            if self._count >= self.failures or self._opened_at is not None:
                self._opened_at = time.monotonic()


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
        instances: DiscoveredBaseUrl | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        """``instances`` (service discovery) picks the base URL of each call, else it is ``base_url``;
        ``breaker`` refuses calls fast while the service keeps failing."""
        self.base_url = base_url.rstrip("/")
        self.instances = instances
        self.breaker = breaker
        self.caller = caller
        self.audience = audience
        self._secret = secret
        self.timeout = (connect_timeout, read_timeout)
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            status_forcelist=(502, 503, 504),
            allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,  # idempotent methods only
            backoff_factor=0.1,
            backoff_jitter=0.1,
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        self.session = requests.Session()
        # Reading proxy settings from the environment on every call costs a lot of CPU and has no use
        # between services on a private network.
        self.session.trust_env = False
        self.session.mount("http://", HTTPAdapter(pool_maxsize=32, max_retries=retry))
        self.session.mount("https://", HTTPAdapter(pool_maxsize=32, max_retries=retry))

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
        if self.breaker is not None and not self.breaker.allow():
            raise UpstreamUnavailable(details={"service": self.audience, "breaker": "open"})
        base_url = self.instances.pick() if self.instances is not None else self.base_url
        try:
            response = self.session.request(
                method,
                f"{base_url}{path}",
                json=json,
                params=params,
                headers=all_headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            self._failed()
            raise UpstreamTimeout(details={"service": self.audience}) from exc
        except requests.RequestException as exc:
            self._failed()
            if _read_timed_out_after_retries(exc):
                raise UpstreamTimeout(details={"service": self.audience}) from exc
            if self.instances is not None and isinstance(exc, requests.ConnectionError):
                self.instances.eject(base_url)  # the next calls go to the other instances
            raise UpstreamUnavailable(details={"service": self.audience}) from exc
        if self.breaker is not None:
            self.breaker.record(ok=response.status_code < 500)
        return response

    def _failed(self) -> None:
        if self.breaker is not None:
            self.breaker.record(ok=False)


def _read_timed_out_after_retries(exc: requests.RequestException) -> bool:
    """Once the retries of an idempotent call are spent, urllib3 reports its read timeout as MaxRetryError,
    which requests raises as a ConnectionError rather than a Timeout."""
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, MaxRetryError) and isinstance(cause.reason, ReadTimeoutError)
