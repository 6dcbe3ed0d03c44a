from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from configcenter import runtime


@pytest.fixture(autouse=True)
def config_center(settings: Any) -> Iterator[Any]:
    """No poller thread in these tests: they call ``runtime.refresh()`` themselves. A fast password hasher
    for the admin users they sign in."""
    settings.CONFIG_POLL_INTERVAL = 0
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # admin_user: fast, not safe
    runtime.reset()
    yield settings
    runtime.reset()
