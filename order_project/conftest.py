"""Test setup shared by the order service's apps."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from order_service.celery import app as celery_app


@pytest.fixture(scope="session", autouse=True)
def event_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Point Celery at a filesystem broker in a temporary folder for the whole run, so events that tests
    publish are real messages that a test can read back, and never reach the development broker under
    var/ (or a RabbitMQ named by BROKER_URL). Set before anything publishes, so no pooled connection to
    the old broker exists yet."""
    root: Path = tmp_path_factory.mktemp("broker")
    options = {
        "data_folder_in": str(root / "queue"),
        "data_folder_out": str(root / "queue"),
        "control_folder": str(root / "control"),
        "store_processed": False,
    }
    for folder in ("queue", "control"):
        (root / folder).mkdir()
    previous = {
        "broker_url": celery_app.conf.broker_url,
        "broker_transport_options": celery_app.conf.broker_transport_options,
    }
    celery_app.conf.update(broker_url="filesystem://", broker_transport_options=options)
    yield options
    celery_app.conf.update(previous)
