"""Test setup shared by the order service's apps."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from common.testing import EventBroker, no_config_center
from order_service.celery import app as celery_app


@pytest.fixture(autouse=True)
def event_broker(tmp_path: Path) -> Iterator[EventBroker]:
    # Every test publishes to a broker of its own, never to the development one or to a RabbitMQ.
    with EventBroker(tmp_path / "broker", celery_app) as broker:
        yield broker


@pytest.fixture(autouse=True)
def isolated_runtime_config(tmp_path: Path) -> Iterator[None]:
    with no_config_center(tmp_path / "config-marker"):
        yield


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # SQLite's shared in-memory test database locks whole tables ("database table is locked", no waiting):
    # the saga's concurrency tests need a file, with the same locking as the service has in embedded mode.
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test_orders.sqlite3")
