"""Test setup shared by the order service's apps."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from common.testing import EventBroker
from order_service.celery import app as celery_app


@pytest.fixture(autouse=True)
def event_broker(tmp_path: Path) -> Iterator[EventBroker]:
    # Every test publishes to a broker of its own, never to the development one or to a RabbitMQ.
    with EventBroker(tmp_path / "broker", celery_app) as broker:
        yield broker
