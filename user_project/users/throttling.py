"""Brute-force limits on sign-in.

Two limits, both counted in the cache (Redis in real mode, so every process of the service shares them):

- per client address: DRF's scoped throttle, scope ``login`` (``LOGIN_RATE``), on every attempt;
- per account: failed attempts per normalised email (``LOGIN_FAILURE_LIMIT`` within
  ``LOGIN_FAILURE_WINDOW`` seconds from the first failure). Past the limit the account refuses every
  attempt until the window lapses. The window is short on purpose: someone who only wants to lock a victim
  out must keep spending attempts (each address of theirs is limited too), and the lock ends at most one
  window after they stop. It never outlives the window, so it can never be permanent.

If the cache is unreachable both limits let sign-in through (logged): a Redis outage must not stop every
user from signing in, and the gateway keeps its own per-address limit.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

logger = logging.getLogger(__name__)


class ScopedSettingsRateThrottle(ScopedRateThrottle):
    """DRF's scoped throttle, reading the rate from the settings on every request.

    DRF copies ``DEFAULT_THROTTLE_RATES`` into a class attribute at import, so a changed setting (an
    override in a test, say) would otherwise be ignored.

    The client is the right-most ``X-Forwarded-For`` entry (``NUM_PROXIES`` = 1): the address the gateway,
    the one proxy in front of every service, saw or derived; entries left of it are the client's own claims.
    """

    def get_rate(self) -> Any:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def allow_request(self, request: Request, view: APIView) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception:  # any cache backend's connection error: fail open, see the module docstring
            logger.warning("login throttle: cache unreachable, attempt let through", exc_info=True)
            return True


def _keys(email: str) -> tuple[str, str]:
    # Hashed: cache keys must be short and safe for every backend, and the cache need not hold addresses.
    digest = hashlib.sha256(email.encode()).hexdigest()[:40]
    return f"login-failures:{digest}", f"login-failures-until:{digest}"


def login_lockout_remaining(*, email: str) -> float | None:
    """Seconds until the normalised ``email`` may try again, or None if it may now."""
    count_key, until_key = _keys(email)
    try:
        values = cache.get_many([count_key, until_key])
    except Exception:  # fail open, see the module docstring
        logger.warning("login throttle: cache unreachable, attempt let through", exc_info=True)
        return None
    if values.get(count_key, 0) < settings.LOGIN_FAILURE_LIMIT:
        return None
    until = values.get(until_key) or time.time() + settings.LOGIN_FAILURE_WINDOW
    return float(max(1, math.ceil(until - time.time())))


def login_failure_record(*, email: str) -> None:
    """Count a failed sign-in for the normalised ``email``; the first failure opens the window."""
    count_key, until_key = _keys(email)
    window = settings.LOGIN_FAILURE_WINDOW
    try:
        # add() and incr() are atomic in Redis (and under a lock in the local-memory cache), so
        # concurrent failures are all counted; incr keeps the key's expiry, so the window stays fixed.
        if cache.add(count_key, 1, timeout=window):
            cache.set(until_key, time.time() + window, timeout=window)
            return
        try:
            cache.incr(count_key)
        except ValueError:  # the window lapsed between add() and incr(): this failure opens the next
            cache.set(count_key, 1, timeout=window)
            cache.set(until_key, time.time() + window, timeout=window)
    except Exception:  # fail open, see the module docstring
        logger.warning("login throttle: cache unreachable, failure not counted", exc_info=True)


def login_failures_clear(*, email: str) -> None:
    """Forget the failures of an account after a successful sign-in."""
    try:
        cache.delete_many(list(_keys(email)))
    except Exception:  # fail open, see the module docstring
        logger.warning("login throttle: cache unreachable", exc_info=True)
