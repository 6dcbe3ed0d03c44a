from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Queue, binding

from common.events import EVENTS_EXCHANGE
from payment_service.celery import app as celery_app

Drain = Callable[[], list[dict[str, Any]]]


def _reset_producer_pools() -> None:
    # Celery caches its connection (and producer) pool, keyed by the transport options it was built with.
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # admin_client's superuser would otherwise cost a deliberately slow hash in every admin test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def broker_options(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Every test publishes to a filesystem broker of its own, never to the shared development one or to
    whatever BROKER_URL the environment names."""
    options = {
        "data_folder_in": str(tmp_path / "broker" / "queue"),
        "data_folder_out": str(tmp_path / "broker" / "queue"),
        "control_folder": str(tmp_path / "broker" / "control"),
        "store_processed": False,
    }
    for folder in ("queue", "control"):
        (tmp_path / "broker" / folder).mkdir(parents=True)
    previous = (celery_app.conf.broker_url, celery_app.conf.broker_transport_options)
    celery_app.conf.broker_url = "filesystem://"
    celery_app.conf.broker_transport_options = options
    _reset_producer_pools()
    yield options
    celery_app.conf.broker_url, celery_app.conf.broker_transport_options = previous
    _reset_producer_pools()


@pytest.fixture
def payment_events(broker_options: dict[str, Any]) -> Drain:
    """A queue bound to the events exchange for ``payment.*``, as a consuming service would bind one; the
    returned function drains it and gives each message's event envelope."""
    # A fresh name each time: kombu's virtual transports remember declared bindings process-wide, and would
    # skip recording an already known one in this test's control folder.
    queue = Queue(f"test-{uuid.uuid4().hex}", [binding(EVENTS_EXCHANGE, routing_key="payment.*")])
    with Connection("filesystem://", transport_options=broker_options) as connection:
        queue(connection.default_channel).declare()

    def drain() -> list[dict[str, Any]]:
        events = []
        with Connection("filesystem://", transport_options=broker_options) as connection:
            bound = queue(connection.default_channel)
            while (message := bound.get(no_ack=True)) is not None:
                assert message.headers["task"] == "events.handle"
                _args, kwargs, _embed = message.decode()
                events.append(kwargs["event"])
        return events

    return drain
