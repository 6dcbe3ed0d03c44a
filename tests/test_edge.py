"""What the edge guarantees: services refuse anything that bypassed the gateway, request ids flow through,
odd paths are refused, and every admin works through the gateway."""

from __future__ import annotations

import http.client
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from conftest import Client

import manage_all


def raw_get(base_url: str, raw_path: str) -> tuple[int, bytes]:
    """Send the path byte for byte (requests and urllib3 would normalise dot segments away)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.putrequest("GET", raw_path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("service", ["users", "orders", "payments"])
def test_a_direct_call_that_bypasses_the_gateway_is_refused(
    system: manage_all.System, customer: Any, service: str
) -> None:
    _, account = customer
    paths = {"users": "/api/v1/users/me/", "orders": "/api/v1/orders/", "payments": "/api/v1/payments/1/"}
    url = system.url(service) + paths[service]
    attempts = {
        "forged identity header": {"X-User-Id": str(account["id"]), "X-User-Is-Staff": "true"},
        "the user's own access token": {"Authorization": f"Bearer {account['access']}"},
        "a made-up assertion": {"X-Service-Assertion": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"},
    }

    for label, headers in attempts.items():
        response = requests.get(url, headers=headers, timeout=10)
        assert response.status_code == 401, (label, response.text)
        assert response.json()["error"]["code"] in {"gateway_required", "invalid_service_assertion"}, label


def test_the_request_id_is_kept_when_well_formed_and_set_otherwise(anonymous: Client) -> None:
    kept = anonymous.get("/api/v1/products/", headers={"X-Request-ID": "e2e-request-0001"})
    assert kept.headers["X-Request-ID"] == "e2e-request-0001"

    replaced = anonymous.get("/api/v1/products/", headers={"X-Request-ID": "bad id\twith junk"})
    assert re.fullmatch(r"[A-Za-z0-9._:-]{8,128}", replaced.headers["X-Request-ID"])
    assert replaced.headers["X-Request-ID"] != "bad id\twith junk"


def test_errors_have_the_envelope_and_a_request_id(anonymous: Client) -> None:
    for response in (
        anonymous.get("/api/v1/orders/"),
        anonymous.get("/api/v1/products/999999/"),
        anonymous.get("/api/v1/nothing-here/"),
        anonymous.post("/api/v1/users/", data="{not json", headers={"Content-Type": "application/json"}),
    ):
        assert response.status_code in {400, 401, 404}, response.text
        error = response.json()["error"]
        # the gateway's own errors and the services' alike name the request and its trace (common.tracing)
        assert set(error) == {"code", "message", "details", "request_id", "trace_id"}
        assert error["request_id"] == response.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", error["trace_id"])


@pytest.mark.parametrize(
    "raw_path",
    [
        "/api/v1/users/../../admin/",
        "/api/v1/users/%2e%2e/%2e%2e/admin/",
        "/api/v1/users/%2E./admin/",
        "/api/v1/orders/1%2F..%2F2/",
        "/api/v1/users//me/",
        "/api/v1/users/%5C..%5Cadmin/",
    ],
)
def test_traversal_paths_are_refused(gateway: str, raw_path: str) -> None:
    status, body = raw_get(gateway, raw_path)

    assert status == 400, body
    assert b"invalid_path" in body


@pytest.mark.parametrize("prefix", ["/admin/", "/admin/users/", "/admin/orders/", "/admin/payments/"])
def test_every_admin_works_through_the_gateway(gateway: str, admin_account: tuple[str, str], prefix: str) -> None:
    email, password = admin_account
    browser = requests.Session()
    login_page = browser.get(f"{gateway}{prefix}login/", timeout=10)
    assert login_page.status_code == 200
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text)
    assert csrf, login_page.text[:500]
    stylesheet = re.search(r'href="(/static/[^"]+\.css)"', login_page.text)
    assert stylesheet
    assert browser.get(gateway + stylesheet.group(1), timeout=10).status_code == 200

    logged_in = browser.post(
        f"{gateway}{prefix}login/?next={prefix}",
        data={"username": email, "password": password, "csrfmiddlewaretoken": csrf.group(1), "next": prefix},
        headers={"Referer": f"{gateway}{prefix}login/"},
        timeout=10,
    )

    assert logged_in.status_code == 200, logged_in.text[:500]
    assert logged_in.url.endswith(prefix)
    service = prefix.strip("/").partition("/")[2] or "gateway"
    assert f"Shop · {service}" in logged_in.text  # this service's own admin, not another's
    assert 'href="/admin' in logged_in.text
