"""The per-account limit on failed sign-ins, through ``auth_token_obtain`` and the cache it counts in."""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from common.testing import assertion_headers
from users.errors import InvalidCredentials, TooManyAttempts
from users.services import auth_token_obtain
from users.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _limit(settings: Any) -> None:
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_FAILURE_WINDOW = 60


def fail(email: str, times: int) -> None:
    for _ in range(times):
        with pytest.raises(InvalidCredentials):
            auth_token_obtain(email=email, password="a wrong guess")


def test_the_account_is_locked_after_the_limit_even_for_the_right_password() -> None:
    UserFactory(email="ann@example.com")
    fail("ann@example.com", 3)

    with pytest.raises(TooManyAttempts) as raised:
        auth_token_obtain(email="ann@example.com", password=PASSWORD)

    assert 55 <= raised.value.wait <= 60


def test_spellings_of_one_address_count_as_one_account() -> None:
    UserFactory(email="ann@example.com")
    fail("ann@example.com", 1)
    fail(" ANN@example.com", 1)
    fail("Ann@Example.COM ", 1)

    with pytest.raises(TooManyAttempts):
        auth_token_obtain(email="ann@example.com", password=PASSWORD)


def test_unknown_addresses_are_counted_like_known_ones() -> None:
    # otherwise the 429 would tell which addresses have accounts
    fail("nobody@example.com", 3)

    with pytest.raises(TooManyAttempts):
        auth_token_obtain(email="nobody@example.com", password="anything")


def test_a_successful_sign_in_forgets_earlier_failures() -> None:
    UserFactory(email="ann@example.com")
    fail("ann@example.com", 2)
    auth_token_obtain(email="ann@example.com", password=PASSWORD)

    fail("ann@example.com", 2)

    assert auth_token_obtain(email="ann@example.com", password=PASSWORD).access


def test_the_lock_ends_with_its_window(settings: Any) -> None:
    # given a locked account and a one-second window
    settings.LOGIN_FAILURE_WINDOW = 1
    UserFactory(email="ann@example.com")
    fail("ann@example.com", 3)
    with pytest.raises(TooManyAttempts):
        auth_token_obtain(email="ann@example.com", password=PASSWORD)

    # when the window has passed
    time.sleep(1.2)

    # then the owner signs in
    assert auth_token_obtain(email="ann@example.com", password=PASSWORD).access


def test_failures_keep_counting_in_the_window_of_the_first() -> None:
    UserFactory(email="ann@example.com")
    fail("ann@example.com", 3)

    with pytest.raises(TooManyAttempts) as first:
        auth_token_obtain(email="ann@example.com", password=PASSWORD)
    with pytest.raises(TooManyAttempts) as later:
        auth_token_obtain(email="ann@example.com", password="another guess")

    # attempts while locked neither count nor push the end of the lock further away
    assert later.value.wait <= first.value.wait


def test_an_unreachable_cache_lets_sign_in_through() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    UserFactory(email="ann@example.com")
    # (a context, not the settings fixture: the cache fixture's clean-up must run against the usual cache)
    with override_settings(CACHES=unreachable):
        fail("ann@example.com", 4)

        assert auth_token_obtain(email="ann@example.com", password=PASSWORD).access


def test_an_unreachable_cache_lets_sign_in_through_both_limits_of_the_endpoint() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    UserFactory(email="ann@example.com")

    with override_settings(CACHES=unreachable):
        response = APIClient().post(
            "/api/v1/auth/token",
            {"email": "ann@example.com", "password": PASSWORD},
            format="json",
            headers=assertion_headers(),
        )

    assert response.status_code == 200


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="real mode only (REDIS_URL)")
def test_failures_are_counted_in_redis_in_real_mode(settings: Any) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["REDIS_URL"],
            "KEY_PREFIX": f"test-throttle-{uuid.uuid4().hex}",  # private to this run
        }
    }
    UserFactory(email="ann@example.com")
    fail("ann@example.com", 3)

    with pytest.raises(TooManyAttempts):
        auth_token_obtain(email="ann@example.com", password=PASSWORD)
