from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from kombu import Connection, pools
from kombu.transport.filesystem import Transport as FilesystemTransport

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


class FilesystemBroker:
    """A private kombu filesystem broker under a test's tmp dir, with this service's Celery app pointed at it."""

    url = "filesystem://"

    def __init__(self, root: Path) -> None:
        for folder in ("queue", "control"):
            (root / folder).mkdir(parents=True)
        self.transport_options = {
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "control_folder": str(root / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        }

    def connection(self) -> Connection:
        return Connection(self.url, transport_options=self.transport_options)


def _forget_broker_state() -> None:
    # Connections and producers made before the switch would keep publishing to the old broker.
    pools.reset()  # closes kombu's shared connection and producer pools and forgets them
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    # The filesystem transport also remembers declared exchanges and bindings per process, and would skip
    # writing them into the new control folder.
    FilesystemTransport.global_state.clear()


@pytest.fixture
def filesystem_broker(tmp_path: Path, settings: Any) -> Iterator[FilesystemBroker]:
    broker = FilesystemBroker(tmp_path / "broker")
    saved = (celery_app.conf.broker_url, celery_app.conf.broker_transport_options)
    settings.CELERY_BROKER_URL = broker.url
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = broker.transport_options
    celery_app.conf.broker_url = broker.url
    celery_app.conf.broker_transport_options = broker.transport_options
    _forget_broker_state()
    yield broker
    celery_app.conf.broker_url, celery_app.conf.broker_transport_options = saved
    _forget_broker_state()
