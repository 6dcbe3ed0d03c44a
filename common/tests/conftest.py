from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from common.testing import EventBroker
from tests import handlers
from tests.celery_app import app as celery_app
from tests.loopback import LoopbackServer, loopback_server


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # SQLite's shared in-memory test database refuses a second writer at once ("database table is locked",
    # no waiting): the relay's thread and the test write concurrently, so the tests use a file, locked as
    # the services' databases are in embedded mode.
    settings.DATABASES["default"].setdefault("TEST", {})["NAME"] = str(
        tmp_path_factory.mktemp("db") / "test_common.sqlite3"
    )


@pytest.fixture
def event_broker(tmp_path: Path) -> Iterator[EventBroker]:
    """A private filesystem broker for this test, with the test project's Celery app pointed at it."""
    with EventBroker(tmp_path / "broker", celery_app) as broker:
        yield broker


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as running:
        yield running


@pytest.fixture
def handler_calls() -> Iterator[list[handlers.Call]]:
    handlers.calls.clear()
    yield handlers.calls
    handlers.calls.clear()


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()
