"""Refresh-token rotation, reuse detection and sign-out, through the services on the real database."""

from __future__ import annotations

import threading
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from users.errors import RefreshTokenError
from users.models import RefreshToken, User
from users.services import auth_logout, auth_token_obtain, auth_token_refresh
from users.tests.factories import PASSWORD, UserFactory


@pytest.fixture
def ann(db: Any) -> User:
    return UserFactory(email="ann@example.com")


def sign_in() -> str:
    return auth_token_obtain(email="ann@example.com", password=PASSWORD).refresh


def refusal(refresh: str) -> str:
    with pytest.raises(RefreshTokenError) as raised:
        auth_token_refresh(refresh=refresh)
    return raised.value.code


def test_each_refresh_spends_its_token_and_continues_the_family(ann: User) -> None:
    first = sign_in()

    second = auth_token_refresh(refresh=first).refresh
    third = auth_token_refresh(refresh=second).refresh

    tokens = list(RefreshToken.objects.order_by("id"))
    assert len({first, second, third}) == 3
    assert len({token.family for token in tokens}) == 1
    assert [token.rotated_at is not None for token in tokens] == [True, True, False]
    assert all(token.revoked_at is None for token in tokens)


def test_reusing_a_spent_token_revokes_the_whole_family_and_only_it(ann: User) -> None:
    # given a session rotated twice, and another session of the same user
    first = sign_in()
    second = auth_token_refresh(refresh=first).refresh
    third = auth_token_refresh(refresh=second).refresh
    other = sign_in()

    # when the first token turns up again
    code = refusal(first)

    # then it and every descendant are revoked as reused, the other session lives on
    assert code == "token_reused"
    family = RefreshToken.objects.exclude(token_hash=RefreshToken.objects.latest("id").token_hash)
    assert set(family.values_list("revoked_reason", flat=True)) == {"reuse"}
    assert refusal(third) == "token_revoked"
    assert auth_token_refresh(refresh=other).refresh


def test_a_refresh_token_reused_after_its_family_was_revoked_is_simply_revoked(ann: User) -> None:
    first = sign_in()
    auth_token_refresh(refresh=first)
    assert refusal(first) == "token_reused"

    assert refusal(first) == "token_revoked"


def test_logout_revokes_the_family_even_through_a_spent_token(ann: User) -> None:
    first = sign_in()
    second = auth_token_refresh(refresh=first).refresh

    auth_logout(refresh=first)

    assert refusal(second) == "token_revoked"
    assert set(RefreshToken.objects.values_list("revoked_reason", flat=True)) == {"logout"}


def test_logout_does_not_touch_the_reason_of_tokens_revoked_before(ann: User) -> None:
    first = sign_in()
    auth_token_refresh(refresh=first)
    refusal(first)  # reuse: the family is revoked

    auth_logout(refresh=first)

    assert set(RefreshToken.objects.values_list("revoked_reason", flat=True)) == {"reuse"}


def test_a_refresh_that_loses_the_race_for_its_token_is_a_reuse(ann: User, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a token that another request spends between this one reading it and claiming it
    token = sign_in()
    real_now = timezone.now
    raced = []

    def now_with_a_competitor() -> datetime:
        if not raced:
            raced.append(True)
            RefreshToken.objects.update(rotated_at=real_now())  # the other request's conditional update won
        return real_now()

    monkeypatch.setattr("users.services.timezone", SimpleNamespace(now=now_with_a_competitor))

    # when this one claims it
    code = refusal(token)

    # then its conditional update found the token spent: a reuse, and no successor was issued
    assert raced
    assert code == "token_reused"
    assert RefreshToken.objects.count() == 1
    assert RefreshToken.objects.get().revoked_reason == "reuse"


@pytest.mark.django_db(transaction=True)
def test_of_two_concurrent_refreshes_with_one_token_at_most_one_succeeds() -> None:
    # given a refresh token, committed so that other connections see it
    UserFactory(email="ann@example.com")
    token = sign_in()
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def refresh() -> None:
        try:
            start.wait()
            auth_token_refresh(refresh=token)
            outcomes.append("ok")
        except RefreshTokenError as exc:
            outcomes.append(exc.code)
        except OperationalError as exc:
            # SQLite's shared in-memory test database refuses a second writer at once ("database table is
            # locked") instead of waiting as a database file or PostgreSQL does: no success either.
            outcomes.append("locked" if connection.vendor == "sqlite" else repr(exc))
        finally:
            connection.close()  # each thread has its own connection

    # when two requests present it at the same moment
    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # then one wins; the other is a reuse, which ends the session
    assert len(outcomes) == 2
    assert outcomes.count("ok") <= 1
    assert RefreshToken.objects.filter(rotated_at__isnull=False).count() <= 1
    if "locked" not in outcomes:
        assert sorted(outcomes) == ["ok", "token_reused"]
        assert RefreshToken.objects.filter(revoked_at__isnull=True).count() == 0
