"""The config center's changes reach the order and payment services' running processes through
``config.changed`` (their event workers announce each version to all of the service's processes, see
common/runtime_config.py), well before ``CONFIG_TTL`` (30 s) would, with no restart; an invalid value is
refused at save time and reaches nobody.

Which version each process uses is read from the ``runtime_config_version`` gauge that every process
exports (one sample per process, labelled with its pid) on its service instance's ``/metrics``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import manage_all

# The bound this test holds the system to: relay poll (0.2 s) + broker poll (0.2 s) + the marker check
# (CONFIG_MARKER_INTERVAL, 1 s) + one fetch, with room for a busy two-core machine. CONFIG_TTL is 30 s.
BOUND = 5.0


@pytest.fixture(scope="module")
def staff(gateway: str, admin_account: tuple[str, str]) -> requests.Session:
    """A session of the gateway's admin: what an operator edits the config center with."""
    email, password = admin_account
    session = requests.Session()
    session.trust_env = False
    login_page = session.get(f"{gateway}/admin/login/", timeout=10)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text)
    assert csrf, login_page.text[:300]
    signed_in = session.post(
        f"{gateway}/admin/login/?next=/admin/",
        data={"username": email, "password": password, "csrfmiddlewaretoken": csrf.group(1), "next": "/admin/"},
        timeout=10,
    )
    assert signed_in.url.endswith("/admin/"), signed_in.text[:300]
    return session


def save(staff: requests.Session, gateway: str, service: str, values: dict[str, Any]) -> requests.Response:
    return staff.put(
        f"{gateway}/admin/config/{service}/default/",
        json={"values": values, "comment": "end-to-end test"},
        headers={"X-CSRFToken": staff.cookies.get("gateway_csrftoken", path="/admin/") or ""},
        timeout=10,
    )


def versions_in_use(system: manage_all.System, service: str) -> dict[str, int]:
    """pid (per instance) -> the config version that process uses, for every process of the service that
    has read its configuration."""
    versions = {}
    for url in system.instance_urls(service):
        text = requests.get(f"{url}/metrics", timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "runtime_config_version" and sample.labels.get("service") == service:
                    versions[f"{url} pid {sample.labels.get('pid')}"] = int(sample.value)
    return versions


def wait_until_every_process_uses(system: manage_all.System, service: str, version: int, since: float) -> float:
    """Seconds from ``since`` until every process of ``service`` that reads its configuration uses
    ``version``; fails past the bound."""
    while True:
        in_use = versions_in_use(system, service)
        if in_use and all(number == version for number in in_use.values()):
            return time.monotonic() - since
        assert time.monotonic() - since < BOUND, f"{service}: {in_use}, wanted version {version}"
        time.sleep(0.05)


def order(customer: Any, product: dict[str, Any]) -> dict[str, Any]:
    client, _account = customer
    response = client.post(
        "/api/v1/orders/",
        json={"items": [{"product_id": product["id"], "quantity": 1}], "payment_method": "tok_visa"},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture
def restored(staff: requests.Session, gateway: str, system: manage_all.System) -> Iterator[None]:
    """The services' configuration back to no values after the test, in use everywhere before the next
    test (the system is shared by the whole session)."""
    yield
    for service in ("orders", "payments"):
        saved = save(staff, gateway, service, {})
        assert saved.status_code == 201, saved.text
        wait_until_every_process_uses(system, service, saved.json()["version"], time.monotonic())


def test_a_saved_change_reaches_every_process_of_the_order_and_payment_services_well_before_the_ttl(
    system: manage_all.System, gateway: str, staff: requests.Session, customer: Any, restored: None
) -> None:
    # given services that have read their configuration (an order reads both: the order service's clients
    # take their timeouts from it, the payment service its charge limit)
    client, _account = customer
    product = client.get("/api/v1/products/").json()[0]
    assert order(customer, product)["status"] == "confirmed"

    # when an operator lowers the payment service's charge limit below the product's price, and changes a
    # timeout of the order service
    limit = Decimal(product["price"]) - Decimal("0.01")
    started = time.monotonic()
    payments_saved = save(staff, gateway, "payments", {"payments.max_charge_amount": float(limit)})
    orders_saved = save(staff, gateway, "orders", {"upstream.read_timeout": 4.5})
    assert (payments_saved.status_code, orders_saved.status_code) == (201, 201), payments_saved.text

    # then every process of both services uses the new version within the bound (no restart, no TTL)
    took = {
        "payments": wait_until_every_process_uses(system, "payments", payments_saved.json()["version"], started),
        "orders": wait_until_every_process_uses(system, "orders", orders_saved.json()["version"], started),
    }
    print(f"config change in use everywhere after {took} s (bound {BOUND} s, CONFIG_TTL 30 s)")

    # and the payment service applies it: the same order is now declined as over the limit
    declined = order(customer, product)
    assert (declined["status"], declined["cancellation_reason"]) == ("cancelled", "payment_declined")
    payment = client.get(f"/api/v1/payments/{declined['payment']['id']}/").json()
    assert (payment["status"], payment["failure_code"]) == ("failed", "amount_too_large")


def test_an_invalid_value_is_refused_at_save_time_and_reaches_no_process(
    system: manage_all.System, gateway: str, staff: requests.Session
) -> None:
    before = staff.get(f"{gateway}/admin/config/payments/default/", timeout=10).json()["version"]

    refused = save(staff, gateway, "payments", {"payments.max_charge_amount": -5})

    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_config"
    assert error["details"] == {"payments.max_charge_amount": "must be between 0.01 and 9999999999.99"}
    assert staff.get(f"{gateway}/admin/config/payments/default/", timeout=10).json()["version"] == before
    assert all(version <= before for version in versions_in_use(system, "payments").values())
