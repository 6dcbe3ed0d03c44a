from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.testing import EventBroker, no_config_center
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
def isolated_runtime_config(tmp_path: Path) -> Iterator[None]:
    with no_config_center(tmp_path / "config-marker"):
        yield
