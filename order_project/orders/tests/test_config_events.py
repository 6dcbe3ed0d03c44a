"""The order service consumes config.changed (its event worker, EVENT_HANDLERS) and passes the news to all
of its processes through the marker they share, against a real config server on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict

import pytest
from django.conf import settings

from common import runtime_config
from common.events import Event
from common.runtime_config import RuntimeConfig, marker_key, marker_store
from common.tasks import handle_event
from common.testing import ConfigCenterStub

pytestmark = pytest.mark.django_db


@pytest.fixture
def config_center() -> Iterator[ConfigCenterStub]:
    stub = ConfigCenterStub("orders")
    yield stub
    stub.stop()


def test_the_order_service_subscribes_to_config_changed() -> None:
    (queue,) = settings.CELERY_TASK_QUEUES
    assert queue.name == "orders.events"
    assert [binding.routing_key for binding in queue.bindings] == ["config.changed"]


def test_a_handled_config_changed_reaches_a_web_process_well_before_the_ttl(
    config_center: ConfigCenterStub,
) -> None:
    config_center.publish({"upstream.read_timeout": 5.0})
    web_process = RuntimeConfig(
        url=config_center.url,
        service="orders",
        profile="default",
        secret=settings.INTERNAL_AUTH_SECRET,
        ttl=600,
        marker_interval=0.05,
        store=marker_store(),
    )
    assert web_process.get("upstream.read_timeout") == 5.0

    version = config_center.publish({"upstream.read_timeout": 9.0})
    event = Event(type="config.changed", data={"service": "orders", "profile": "default", "version": version})
    handle_event.apply(kwargs={"event": asdict(event)}).get()  # as the order service's event worker runs it

    assert marker_store().get(marker_key("default")) == version
    deadline = time.monotonic() + 5
    while web_process.get("upstream.read_timeout") != 9.0:
        assert time.monotonic() < deadline, "the announcement did not reach the other process"
        time.sleep(0.02)
    assert not runtime_config.client().started  # the worker only announced; it fetched nothing
    web_process.stop()
