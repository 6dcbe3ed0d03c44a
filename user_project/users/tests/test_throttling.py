"""The per-account limit on sign-in attempts, through ``auth_token_obtain`` and the database it counts in."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from common.testing import assertion_headers
from users.errors import InvalidCredentials, TooManyAttempts
from users.models import LoginAttemptWindow
from users.services import auth_token_obtain
from users.tests.factories import PASSWORD, UserFactory
from users.tests.hashers import CountingHasher

pytestmark = pytest.mark.django_db

USER_PROJECT = Path(__file__).resolve().parents[2]  # where `python -m users...` finds the service


@pytest.fixture(autouse=True)
def _limit(settings: Any) -> None:
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_FAILURE_WINDOW = 60


def unreachable_cache() -> dict[str, Any]:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }


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


def test_windows_that_ended_are_pruned_when_another_account_opens_one() -> None:
    # given guesses at an address whose window has since ended
    fail("nobody@example.com", 1)
    LoginAttemptWindow.objects.update(window_ends_at=timezone.now() - timedelta(seconds=1))

    # when another address is tried
    fail("someone@example.com", 1)

    # then only the open window is kept: the table does not grow with every address ever tried
    assert list(LoginAttemptWindow.objects.values_list("attempts", flat=True)) == [1]


def test_the_per_account_limit_holds_while_the_cache_is_unreachable() -> None:
    # the attempts are counted in the database, not in the cache the per-address limit uses
    UserFactory(email="ann@example.com")
    with override_settings(CACHES=unreachable_cache()):
        fail("ann@example.com", 3)

        with pytest.raises(TooManyAttempts):
            auth_token_obtain(email="ann@example.com", password=PASSWORD)


def test_sign_in_goes_through_when_the_attempt_count_cannot_be_written() -> None:
    # given a database refusing every statement on the table of attempts (as one that is down or locked
    # past its timeout would), and an account whose limit is spent
    UserFactory(email="ann@example.com")
    fail("ann@example.com", 3)

    def refuse_attempt_counts(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if LoginAttemptWindow._meta.db_table in sql:
            raise OperationalError("database is locked")
        return execute(sql, params, many, context)

    # when the owner signs in
    with connection.execute_wrapper(refuse_attempt_counts):
        tokens = auth_token_obtain(email="ann@example.com", password=PASSWORD)

    # then they are let through: the gateway's login policy is the first line, and fails closed
    assert tokens.access


def test_an_unreachable_cache_lets_sign_in_through_the_per_address_limit_of_the_endpoint() -> None:
    UserFactory(email="ann@example.com")

    with override_settings(CACHES=unreachable_cache()):
        response = APIClient().post(
            "/api/v1/auth/token",
            {"email": "ann@example.com", "password": PASSWORD},
            format="json",
            headers=assertion_headers(),
        )

    assert response.status_code == 200


# --- concurrency: real threads and processes, each with its own database connection ---------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_wrong_guesses_get_no_more_password_checks_than_the_limit(settings: Any) -> None:
    # given an account, committed so that every thread's connection sees it, and a hasher counting checks
    settings.PASSWORD_HASHERS = ["users.tests.hashers.CountingHasher"]
    UserFactory(email="ann@example.com")
    CountingHasher.checks = 0
    guesses = 10
    start = threading.Barrier(guesses)

    def guess(attempt: int) -> Any:
        try:
            start.wait(timeout=30)
            return APIClient().post(
                "/api/v1/auth/token",
                {"email": "ann@example.com", "password": "a wrong guess"},
                format="json",
                # each from an address of its own, so that only the per-account limit stands in the way
                headers={**assertion_headers(), "X-Forwarded-For": f"203.0.113.{attempt}"},
            )
        finally:
            connection.close()  # each thread's own connection

    # when ten guesses for it arrive at once
    with ThreadPoolExecutor(max_workers=guesses) as pool:
        answers = list(pool.map(guess, range(guesses)))

    # then only the limit's worth reach the password check; the others are refused before it
    assert CountingHasher.checks == 3
    assert sorted(answer.status_code for answer in answers) == [401] * 3 + [429] * 7
    for refused in (answer for answer in answers if answer.status_code == 429):
        assert refused.json()["error"]["code"] == "too_many_attempts"
        assert 0 < int(refused.headers["Retry-After"]) <= 60


@pytest.mark.django_db(transaction=True)
def test_every_process_of_the_service_counts_in_one_window_per_account() -> None:
    # given an account, committed, and two processes of the service on the test database
    UserFactory(email="ann@example.com")
    environment = {
        **os.environ,
        "TEST_DATABASE": json.dumps(connection.settings_dict),
        "LOGIN_FAILURE_LIMIT": "3",
        "LOGIN_FAILURE_WINDOW": "60",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "users.tests.sign_in_process", "ann@example.com", "3"],
            cwd=USER_PROJECT,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"

        # when each makes three wrong guesses, both starting at once
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outcomes = [json.loads(process.communicate(timeout=60)[0]) for process in processes]
    finally:
        for process in processes:
            process.kill()
            process.wait()

    # then three guesses in all were checked, however they interleaved, and the account is locked here too
    assert sorted(outcomes[0] + outcomes[1]) == ["invalid_credentials"] * 3 + ["too_many_attempts"] * 3
    with pytest.raises(TooManyAttempts):
        auth_token_obtain(email="ann@example.com", password=PASSWORD)
