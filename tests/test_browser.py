"""The pages people use — each service's admin and API docs — in a real headless Chromium, through the
gateway."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import sign_up

import manage_all

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Chromium is required in CI (apt-get install chromium)")
        pytest.skip("no Chromium on this machine")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    yield page
    context.close()


def test_staff_signs_in_to_the_user_admin_and_finds_a_new_customer(
    page: Any, system: manage_all.System, admin_account: tuple[str, str]
) -> None:
    gateway = system.url("gateway")
    _, customer = sign_up(gateway, name="Katherine Johnson")
    email, password = admin_account

    page.goto(f"{gateway}/admin/users/")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    page.click("a[href='/admin/users/users/user/']")
    page.wait_for_selector("#result_list")

    assert customer["email"] in page.inner_text("#result_list")
    # the admin's own stylesheet came through the gateway: the header is styled, not default black text
    header_background = page.eval_on_selector("#header", "el => getComputedStyle(el).backgroundColor")
    assert header_background not in ("rgba(0, 0, 0, 0)", "transparent")
    page.screenshot(path=str(system.var_dir / "admin-users.png"))


def test_the_order_admin_shows_an_order_read_only(
    page: Any, system: manage_all.System, admin_account: tuple[str, str]
) -> None:
    gateway = system.url("gateway")
    client, _ = sign_up(gateway)
    product = client.get("/api/v1/products/").json()[0]
    order = client.post(
        "/api/v1/orders/",
        json={"items": [{"product_id": product["id"], "quantity": 3}], "payment_method": "tok_visa"},
    ).json()
    email, password = admin_account

    page.goto(f"{gateway}/admin/orders/orders/order/{order['id']}/change/")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#order_form")

    text = page.inner_text("#order_form")
    assert order["total_amount"] in text
    assert "confirmed" in text.lower()
    assert page.query_selector("input[name=total_amount]") is None  # shown, not editable


def test_one_swagger_ui_documents_the_public_api_offline(page: Any, system: manage_all.System) -> None:
    gateway = system.url("gateway")
    outside_requests: list[str] = []
    page.on("request", lambda request: outside_requests.append(request.url))

    page.goto(f"{gateway}/api/docs/")
    page.wait_for_selector(".opblock", timeout=15_000)

    # every service's public paths on one page, the gateway's own overview too, none of the internal ones
    text = page.inner_text("#swagger-ui")
    for path in ("/api/v1/users/me/", "/api/v1/orders/", "/api/v1/payments/{payment_id}/", "/api/v2/products/"):
        assert path in text
    assert "/api/v1/me/overview" in text
    assert "/health/" not in text
    assert page.locator(".opblock.opblock-deprecated").count() >= 1  # /api/v1/products/
    # the public authentication: a Bearer token, not the internal service assertion
    page.click("button.authorize")
    dialog = page.inner_text(".dialog-ux")
    assert "BearerAuth" in dialog
    assert "X-Service-Assertion" not in dialog
    assert [url for url in outside_requests if not url.startswith(gateway)] == []
    page.screenshot(path=str(system.var_dir / "api-docs.png"), full_page=False)


@pytest.mark.parametrize("service", ["users", "orders", "payments"])
def test_the_old_per_service_docs_lead_to_the_public_page(page: Any, system: manage_all.System, service: str) -> None:
    gateway = system.url("gateway")

    page.goto(f"{gateway}/api/docs/{service}/")
    page.wait_for_selector(".opblock", timeout=15_000)

    assert page.url == f"{gateway}/api/docs/"
