"""Password guessing at the admins' sign-in forms counts against the login policy (proxy/admin_throttle.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from proxy.tests.upstream_stub import StubUpstream
from proxy.tests.utils import json_of

pytestmark = pytest.mark.django_db

GUESS = {"username": "admin@example.com", "password": "not-the-password"}
# Limits per day: a fixed window ends on the clock, and a sign-in takes a password hash (tenths of a second
# on a loaded machine), so a test's attempts could straddle a minute's end and be counted in two windows.


def test_sign_in_attempts_at_the_gateway_admin_past_the_login_limit_are_refused_with_429(
    client: Client, settings: Any
) -> None:
    settings.RATE_LIMIT_LOGIN = "2/day"

    answers = [client.post("/admin/login/", GUESS) for _ in range(3)]

    assert [answer.status_code for answer in answers] == [200, 200, 429]  # 200: the form again, with an error
    refused = answers[2]
    assert json_of(refused)["error"]["code"] == "rate_limited"
    assert int(refused["Retry-After"]) > 0
    assert refused["RateLimit-Policy"] == '"login";q=2;w=86400'
    assert answers[0]["RateLimit"].startswith('"login";r=1;')


def test_showing_the_sign_in_form_is_not_counted(client: Client, settings: Any) -> None:
    settings.RATE_LIMIT_LOGIN = "1/day"

    shown = [client.get("/admin/login/").status_code for _ in range(3)]

    assert shown == [200, 200, 200]
    assert client.post("/admin/login/", GUESS).status_code == 200


def test_a_service_admin_sign_in_is_counted_with_the_gateway_one_and_refused_unforwarded(
    client: Client, settings: Any, stubs: dict[str, StubUpstream]
) -> None:
    settings.RATE_LIMIT_LOGIN = "2/day"
    orders = stubs["orders"]

    client.post("/admin/login/", GUESS)
    first = client.post("/admin/orders/login/", GUESS)
    orders.received.clear()
    refused = client.post("/admin/orders/login/", GUESS)

    assert first.status_code != 429
    assert refused.status_code == 429
    assert orders.received == []  # never reached the service


def test_other_admin_posts_are_not_counted_as_sign_ins(admin_client: Client, settings: Any) -> None:
    settings.RATE_LIMIT_LOGIN = "1/day"

    for _ in range(3):
        assert admin_client.post("/admin/logout/").status_code != 429
