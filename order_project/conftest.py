"""Test setup shared by the order service's apps."""

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from common import runtime_config
from common.testing import EventBroker
from order_service.celery import app as celery_app


@pytest.fixture(autouse=True)
def event_broker(tmp_path: Path) -> Iterator[EventBroker]:
    # Every test publishes to a broker of its own, never to the development one or to a RabbitMQ.
    with EventBroker(tmp_path / "broker", celery_app) as broker:
        yield broker


@pytest.fixture(autouse=True)
def no_config_center(settings: Any, tmp_path: Path) -> Iterator[None]:
    # Never a config center that may be running on this machine (127.0.0.1:8000): by default a loopback
    # port nothing listens on, so runtime_config answers with the settings (tests that need a config center
    # start their own, see orders/tests/test_runtime_config.py). Announced versions stay in the test's folder.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        settings.CONFIG_CENTER_URL = f"http://127.0.0.1:{probe.getsockname()[1]}"
    settings.CONFIG_MARKER_DIR = str(tmp_path / "config-marker")
    runtime_config.reset()
    yield
    runtime_config.reset()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # SQLite's shared in-memory test database locks whole tables ("database table is locked", no waiting):
    # the saga's concurrency tests need a file, with the same locking as the service has in embedded mode.
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test_orders.sqlite3")
