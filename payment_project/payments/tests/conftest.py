from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common import runtime_config
from common.testing import EventBroker
from payment_service.celery import app as celery_app


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # admin_client's superuser would otherwise cost a deliberately slow hash in every admin test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def event_broker(tmp_path: Path) -> Iterator[EventBroker]:
    # Every test publishes to a broker of its own, never to the development one or to a RabbitMQ.
    with EventBroker(tmp_path / "broker", celery_app) as broker:
        yield broker


@pytest.fixture(autouse=True)
def no_config_center(settings: Any, tmp_path: Path) -> Iterator[None]:
    # Never a config center that may be running on this machine (127.0.0.1:8000): a loopback port nothing
    # listens on, so runtime_config answers with the settings (test_runtime_config.py starts a real one).
    # Announced versions stay in the test's folder.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        settings.CONFIG_CENTER_URL = f"http://127.0.0.1:{probe.getsockname()[1]}"
    settings.CONFIG_MARKER_DIR = str(tmp_path / "config-marker")
    runtime_config.reset()
    yield
    runtime_config.reset()
