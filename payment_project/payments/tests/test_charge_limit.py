"""The per-charge limit comes from the config center (``payments.max_charge_amount``) through the real
common.runtime_config client, against a real config server on loopback: a new version applies without a
restart, on a config.changed event handled through the service's own event task, in this process at once
and in the service's other processes through the shared marker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from common import runtime_config
from common.events import Event
from common.runtime_config import RuntimeConfig, marker_key, marker_store
from common.tasks import handle_event
from common.testing import ConfigCenterStub, assertion_headers
from payments.methods import max_charge_amount
from payments.models import Payment

pytestmark = pytest.mark.django_db

CHARGE_URL = "/api/v1/payments/"
KEY = "payments.max_charge_amount"


@pytest.fixture
def config_server(settings: Any) -> Iterator[ConfigCenterStub]:
    server = ConfigCenterStub("payments")
    settings.CONFIG_CENTER_URL = server.url
    settings.CONFIG_TTL = 600.0  # within a test only an event brings a new version, unless it says otherwise
    runtime_config.reset()
    yield server
    runtime_config.reset()
    server.stop()


def charge(client: Client, amount: str, *, key: str | None = None) -> dict[str, Any]:
    headers = assertion_headers(user_id=7, caller="orders")
    if key:
        headers["Idempotency-Key"] = key
    response = client.post(
        CHARGE_URL,
        {"order_id": 42, "amount": amount, "currency": "USD", "payment_method": "tok_visa"},
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code in (200, 201), response.content
    return dict(response.json())


def config_changed(version: int) -> None:
    """A config.changed event for this service, handled as its event worker handles it (the real task,
    through EVENT_HANDLERS and the inbox)."""
    event = Event(type="config.changed", data={"service": "payments", "profile": "default", "version": version})
    handle_event.apply(kwargs={"event": asdict(event)}).get()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_without_a_limit_any_amount_is_charged(client: Client) -> None:
    assert charge(client, "9999999.99")["status"] == "succeeded"


def test_the_setting_is_the_limit_when_the_config_center_has_none(client: Client, settings: Any) -> None:
    settings.PAYMENT_MAX_CHARGE_AMOUNT = Decimal("100.00")

    assert charge(client, "100.00")["status"] == "succeeded"
    over = charge(client, "100.01")

    assert (over["status"], over["failure_code"]) == ("failed", "amount_too_large")


def test_a_new_limit_applies_at_once_on_config_changed_without_a_restart(
    client: Client, config_server: ConfigCenterStub
) -> None:
    config_server.publish({KEY: 500})
    assert charge(client, "400.00")["status"] == "succeeded"

    version = config_server.publish({KEY: 250.5})
    config_changed(version)

    declined = charge(client, "400.00")
    assert (declined["status"], declined["failure_code"]) == ("failed", "amount_too_large")
    assert charge(client, "250.50")["status"] == "succeeded"
    assert marker_store().get(marker_key("default")) == version  # announced to the other processes


def test_the_other_processes_of_the_service_follow_the_announcement(
    config_server: ConfigCenterStub, settings: Any
) -> None:
    config_server.publish({KEY: 500})
    web_process = RuntimeConfig(  # another gunicorn worker: its own memory, the same marker files
        url=config_server.url,
        service="payments",
        profile="default",
        secret=settings.INTERNAL_AUTH_SECRET,
        ttl=600,
        marker_interval=0.05,
        store=marker_store(),
    )
    assert web_process.get(KEY) == 500

    config_changed(config_server.publish({KEY: 50}))  # the event worker, which never read its config

    wait_for(lambda: web_process.get(KEY) == 50)
    assert not runtime_config.client().started  # the worker fetched nothing itself
    web_process.stop()


def test_a_replayed_charge_keeps_its_first_outcome_after_the_limit_changes(
    client: Client, config_server: ConfigCenterStub
) -> None:
    config_server.publish({KEY: 500})
    first = charge(client, "400.00", key="order-a1-charge")

    config_changed(config_server.publish({KEY: 100}))

    assert charge(client, "400.00", key="order-a1-charge") == first  # the same payment, still succeeded
    assert Payment.objects.count() == 1


def test_an_unreachable_config_center_leaves_the_last_good_limit(
    client: Client, config_server: ConfigCenterStub
) -> None:
    config_server.publish({KEY: 100})
    assert max_charge_amount() == Decimal("100.00")

    config_server.stop()
    assert not runtime_config.client().refresh()  # what the watcher's next revalidation meets

    assert max_charge_amount() == Decimal("100.00")
    assert charge(client, "100.01")["failure_code"] == "amount_too_large"


def test_a_value_the_service_cannot_use_leaves_the_setting(config_server: ConfigCenterStub, settings: Any) -> None:
    # refused at save time by the config center's schema; one stored under an older schema must not stop charges
    settings.PAYMENT_MAX_CHARGE_AMOUNT = Decimal("75.00")
    config_server.publish({KEY: "lots"})

    assert max_charge_amount() == Decimal("75.00")
