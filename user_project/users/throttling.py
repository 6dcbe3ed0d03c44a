"""Brute-force limits on sign-in.

Two limits, each counted where every process of the service shares it:

- per client address: DRF's scoped throttle, scope ``login`` (``LOGIN_RATE``), on every attempt, counted in
  the cache (Redis in real mode). If the cache is unreachable it lets sign-in through (logged): a Redis
  outage must not stop every user from signing in, and the gateway keeps its own per-address limit.
- per account: attempts per normalised email (``LOGIN_FAILURE_LIMIT`` within ``LOGIN_FAILURE_WINDOW``
  seconds from the first), counted in the service's database (``LoginAttemptWindow``). An attempt takes
  its slot *before* its password is checked, with one conditional update: of any number of concurrent
  attempts, from any number of processes, at most the limit's worth reach the (slow) password check. A
  successful sign-in clears the count, so what locks an account is failures. Past the limit the account
  refuses every attempt until the window lapses. The window is short on purpose: someone who only wants to
  lock a victim out must keep spending attempts (each address of theirs is limited too), and the lock ends
  at most one window after they stop. It never outlives the window, so it can never be permanent.

Why the database and not the cache for the per-account count: in embedded mode the cache is per process
(LocMem), which multiplied the limit by the number of gunicorn workers; and Django's ``RedisCache.incr``
is EXISTS then INCR, so a key expiring between the two comes back without an expiry, a lock that never
ends. The service's database is shared by all its processes in both modes, and a conditional update on it
is atomic in both (SQLite serialises writers, PostgreSQL re-checks the condition on the locked row). One
store and one code path, tested as it runs. If the count cannot be read or written (a database error), the
attempt is let through (logged), as with the cache: the gateway's ``login`` policy, which fails closed, is
the first line.
"""

from __future__ import annotations

import hashlib
import logging
import math
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from users.models import LoginAttemptWindow

logger = logging.getLogger(__name__)

# Reserving is a few statements; another request may change the row between two of them (a success
# clears it, two first attempts both insert, the window lapses). Each such change is one more round, and
# a change per round is all but impossible for long: this bounds the loop, not the expected work.
RESERVE_ROUNDS = 5


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


def _account(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()


def _seconds_until(moment: datetime) -> float:
    # Whole seconds, at least one: Retry-After is an integer, and 0 would invite an immediate retry.
    return float(max(1, math.ceil((moment - timezone.now()).total_seconds())))


def login_attempt_reserve(*, email: str) -> float | None:
    """Count an attempt to sign in as the normalised ``email``, before its password is checked.

    Returns None when the attempt has its slot in the account's window and may go on, else the seconds
    until the window ends (the account is locked; the attempt is not counted, so it does not push the end
    further away).
    """
    account = _account(email)
    limit = settings.LOGIN_FAILURE_LIMIT
    window = timedelta(seconds=settings.LOGIN_FAILURE_WINDOW)
    windows = LoginAttemptWindow.objects.filter(account=account)
    try:
        # A savepoint when the caller is in a transaction: a database error then undoes only this, and the
        # caller's transaction stays usable (the error is let through, below).
        with transaction.atomic():
            for _ in range(RESERVE_ROUNDS):
                now = timezone.now()
                # A free slot in the open window: the condition and the increment are one statement, so the
                # database hands out the last slot once however many attempts ask at the same moment.
                if windows.filter(window_ends_at__gt=now, attempts__lt=limit).update(attempts=F("attempts") + 1):
                    return None
                # The window lapsed: this attempt opens the next one (conditional too: one of concurrent
                # attempts reopens it, the others find it open and take slots in it next round).
                if windows.filter(window_ends_at__lte=now).update(attempts=1, window_ends_at=now + window):
                    return None
                current = windows.values_list("attempts", "window_ends_at").first()
                if current is None:
                    if _window_open(account=account, now=now, window=window):
                        return None
                    continue  # a concurrent first attempt opened it: take a slot in it
                attempts, ends_at = current
                if attempts >= limit and ends_at > now:
                    return _seconds_until(ends_at)
                # else the row changed between our statements (cleared, or just lapsed): another round
    except DatabaseError:  # fail open, see the module docstring
        logger.warning("login throttle: attempt count unavailable, attempt let through", exc_info=True)
        return None
    # Refusing briefly is the safe side: letting through would break the limit the rounds were keeping.
    logger.warning("login throttle: no slot settled after %s rounds, attempt refused", RESERVE_ROUNDS)
    return 1.0


def _window_open(*, account: str, now: datetime, window: timedelta) -> bool:
    """Open the account's first window with this attempt in it; False if a concurrent attempt did first."""
    try:
        with transaction.atomic():  # a savepoint when nested, so a lost race leaves the caller's intact
            LoginAttemptWindow.objects.create(account=account, attempts=1, window_ends_at=now + window)
    except IntegrityError:
        return False
    # Rows of lapsed windows would otherwise pile up, one per address ever tried. Pruning when a row is
    # added keeps the table to about one window's worth of accounts, with no scheduled job; the index on
    # window_ends_at keeps it cheap. An attempt that meanwhile reopened one of them has moved its end past
    # now, so this leaves it alone.
    LoginAttemptWindow.objects.filter(window_ends_at__lte=now).delete()
    return True


def login_attempts_clear(*, email: str) -> None:
    """Forget an account's attempts after a successful sign-in."""
    try:
        with transaction.atomic():  # as in login_attempt_reserve: an error leaves the caller's transaction usable
            LoginAttemptWindow.objects.filter(account=_account(email)).delete()
    except DatabaseError:  # fail open, see the module docstring
        logger.warning("login throttle: attempt count unavailable, not cleared", exc_info=True)
