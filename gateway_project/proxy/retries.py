"""When a failed call to a service may be tried again, and how long to wait first.

Retries help with one bad instance or one broken connection and hurt during an outage, when every
client's retries multiply the load on a service that is already failing. So a retry must be safe (an
idempotent method, or a POST carrying ``Idempotency-Key`` on a route whose service stores the keys: never a
plain POST or PATCH), fit in the request's deadline, and fit in the service's retry budget: over the last
``RETRY_BUDGET_WINDOW`` seconds, retries may be at most ``RETRY_BUDGET_RATIO`` of the requests (plus
``RETRY_BUDGET_MIN``, so a quiet service still gets its rare retry), the scheme of Finagle's and Envoy's
retry budgets. The budget is per worker process: exact sharing is not needed for a ratio, and it costs no round trip.
"""

from __future__ import annotations

import functools
import math
import random
import threading
import time

from django.conf import settings

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
BACKOFF_BASE = 0.025  # seconds before the first retry, at most (full jitter)
BACKOFF_CAP = 0.5
_BUCKETS = 10


def retryable(method: str, headers: dict[str, str], *, honours_idempotency_key: bool) -> bool:
    """Whether sending the request twice does no more than sending it once. An ``Idempotency-Key`` makes a
    POST so only where the service keeps the keys (``UpstreamPolicy.honours_idempotency_key``): anywhere
    else a repeated POST is a second request (a spent refresh token presented again revokes the user's
    sign-in; a failed sign-in is counted twice)."""
    if method in IDEMPOTENT_METHODS:
        return True
    return method == "POST" and honours_idempotency_key and "Idempotency-Key" in headers


def backoff(retry: int) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2^(retry-1))], so that clients that failed together
    do not come back together."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (retry - 1)))  # noqa: S311


class RetryBudget:
    """Requests and retries counted in ``_BUCKETS`` slices of a sliding window."""

    def __init__(self, *, ratio: float, minimum: int, window: float) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self._slice = window / _BUCKETS
        self._lock = threading.Lock()
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._current = self._slice_number()

    def _slice_number(self) -> int:
        return math.floor(time.monotonic() / self._slice)

    def _advance(self) -> int:
        now = self._slice_number()
        if now != self._current:
            for number in range(max(self._current + 1, now - _BUCKETS + 1), now + 1):
                self._requests[number % _BUCKETS] = 0
                self._retries[number % _BUCKETS] = 0
            self._current = now
        return now % _BUCKETS

    def record_request(self) -> None:
        with self._lock:
            self._requests[self._advance()] += 1

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it."""
        with self._lock:
            index = self._advance()
            # counted after spending: this retry too must fit in the share
            if sum(self._retries) + 1 > self._minimum + self._ratio * sum(self._requests):
                return False
            self._retries[index] += 1
            return True


@functools.cache
def _budget(service: str, ratio: float, minimum: int, window: float) -> RetryBudget:
    return RetryBudget(ratio=ratio, minimum=minimum, window=window)


def budget(service: str) -> RetryBudget:
    return _budget(service, settings.RETRY_BUDGET_RATIO, settings.RETRY_BUDGET_MIN, settings.RETRY_BUDGET_WINDOW)


def reset() -> None:
    _budget.cache_clear()
