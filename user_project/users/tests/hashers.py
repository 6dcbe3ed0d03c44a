"""A password hasher for tests that counts the passwords it checks."""

from __future__ import annotations

import threading
import time

from django.contrib.auth.hashers import MD5PasswordHasher


class CountingHasher(MD5PasswordHasher):
    """The tests' fast MD5 hasher (so it verifies the factories' passwords), counting each check.

    Each check also takes a little while, as the production hasher's does on purpose: concurrent sign-ins
    then overlap as they do in production, where a check-then-record throttle lets them all through.
    """

    checks = 0
    _lock = threading.Lock()

    def verify(self, password: str, encoded: str) -> bool:
        with CountingHasher._lock:
            CountingHasher.checks += 1
        time.sleep(0.05)
        return super().verify(password, encoded)
