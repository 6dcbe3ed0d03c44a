from __future__ import annotations

import asyncio
import datetime
import time

import pytest
from django.test import override_settings
from health_check.exceptions import ServiceUnavailable

from common.health import SERVICE_CHECKS, Broker
from common.testing import EventBroker
from tests.loopback import closed_port


def test_broker_check_passes_against_the_filesystem_broker(event_broker: EventBroker) -> None:
    result = asyncio.run(Broker().get_result())

    assert result.error is None


def test_broker_check_fails_quickly_against_an_unreachable_rabbitmq() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}//"
    check = Broker(timeout=datetime.timedelta(seconds=1))

    started = time.monotonic()
    with (
        override_settings(CELERY_BROKER_URL=url, CELERY_BROKER_TRANSPORT_OPTIONS={"confirm_publish": True}),
        pytest.raises(ServiceUnavailable, match="Broker unreachable"),
    ):
        check.run()

    assert time.monotonic() - started < check.timeout.total_seconds()


def test_broker_check_result_against_an_unreachable_rabbitmq_is_unavailable() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}//"

    with override_settings(CELERY_BROKER_URL=url, CELERY_BROKER_TRANSPORT_OPTIONS={"confirm_publish": True}):
        result = asyncio.run(Broker(timeout=datetime.timedelta(seconds=1)).get_result())

    assert isinstance(result.error, ServiceUnavailable)
    assert "Broker unreachable" in str(result.error)  # its own finding, not the wrapper's "Timed out"


def test_service_checks_include_the_broker() -> None:
    assert "common.health.Broker" in SERVICE_CHECKS
