from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache

from common.testing import EventBroker
from user_service.celery import app as celery_app


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # The production hasher takes a good fraction of a second per password on purpose; tests hash hundreds.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _private_empty_cache(settings: Any) -> Iterator[None]:
    # The throttle counts requests in the cache: each test starts with none. A per-process cache, so
    # clearing it never flushes a Redis that other services' processes share.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tests"}}
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def event_broker(tmp_path: Path) -> Iterator[EventBroker]:
    # Every test publishes to a broker of its own, never to the development one or to a RabbitMQ.
    with EventBroker(tmp_path / "broker", celery_app) as broker:
        yield broker
