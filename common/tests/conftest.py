from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from common.http import forget_clients
from common.testing import EventBroker
from tests import handlers
from tests.celery_app import app as celery_app
from tests.loopback import LoopbackServer, closed_port, loopback_server


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


@pytest.fixture(autouse=True)
def no_tracked_service_clients() -> Iterator[None]:
    """Each test's service clients (common.http.service_client) are its own in /metrics and the checks."""
    forget_clients()
    yield
    forget_clients()


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


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: REDIS_URL (real mode), else a throw-away redis-server on a free loopback port."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no Redis: set REDIS_URL or install redis-server")
    import redis

    port = closed_port()
    process = subprocess.Popen(  # noqa: S603 (a fixed binary and arguments)
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url, socket_timeout=0.5).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.skip("redis-server did not start")
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
