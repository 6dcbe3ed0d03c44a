"""Signing-key rotation: the keys in the JWKS, the key that signs, and the ``signing_keys`` command."""

from __future__ import annotations

from io import StringIO
from typing import Any

import jwt
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from common.settings import new_ed25519_private_key_pem
from common.tokens import public_jwk
from users.keys import configured_key, signing_key
from users.models import SigningKey, User
from users.services import auth_token_obtain
from users.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def ann(db: Any) -> User:
    return UserFactory(email="ann@example.com")


def published_kids(client: APIClient) -> list[str]:
    return [jwk["kid"] for jwk in client.get("/.well-known/jwks.json").json()["keys"]]


def signing_kid() -> str:
    return jwt.get_unverified_header(auth_token_obtain(email="ann@example.com", password=PASSWORD).access)["kid"]


def keys(*args: str) -> str:
    out = StringIO()
    call_command("signing_keys", *args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def configured_kid() -> str:
    return public_jwk(configured_key().public_key())["kid"]


def test_the_configured_key_signs_and_is_published_on_a_fresh_database(api_client: APIClient, ann: User) -> None:
    assert signing_kid() == configured_kid()
    assert published_kids(api_client) == [configured_kid()]
    # its private half stays in the environment
    assert SigningKey.objects.get().private_key == ""


def test_rotating_publishes_the_new_key_at_once_and_signs_with_it_after_the_delay(
    api_client: APIClient, ann: User
) -> None:
    new = keys("rotate", "--activate-in", "60")

    assert published_kids(api_client) == [new, configured_kid()]
    assert signing_kid() == configured_kid()

    SigningKey.objects.filter(kid=new).update(activated_at=timezone.now())  # the delay has passed
    assert signing_kid() == new
    assert published_kids(api_client) == [new, configured_kid()]


def test_a_rotated_key_signs_tokens_the_jwks_verifies(api_client: APIClient, ann: User) -> None:
    keys("rotate", "--activate-in", "0")
    access = auth_token_obtain(email="ann@example.com", password=PASSWORD).access

    [jwk, _] = api_client.get("/.well-known/jwks.json").json()["keys"]

    claims = jwt.decode(access, jwt.PyJWK(jwk).key, algorithms=["EdDSA"], audience="shop-api")
    assert claims["sub"] == str(ann.id)


def test_a_superseded_key_keeps_only_its_public_half(ann: User) -> None:
    first = keys("rotate", "--activate-in", "0")
    second = keys("rotate", "--activate-in", "0")

    assert SigningKey.objects.get(kid=first).private_key == ""
    assert SigningKey.objects.get(kid=second).private_key.startswith("-----BEGIN PRIVATE KEY-----")


def test_retiring_removes_a_key_from_the_jwks_for_good(api_client: APIClient, ann: User) -> None:
    new = keys("rotate", "--activate-in", "0")

    keys("retire", configured_kid())

    assert published_kids(api_client) == [new]
    # the configured key, met again at the next start, is not brought back
    assert signing_kid() == new
    assert published_kids(api_client) == [new]


def test_the_key_signing_now_cannot_be_retired(ann: User) -> None:
    with pytest.raises(CommandError, match="rotate to another key first"):
        keys("retire", configured_kid())

    assert signing_kid() == configured_kid()


def test_retiring_an_unknown_key_fails(db: Any) -> None:
    with pytest.raises(CommandError, match="No signing key"):
        keys("retire", "no-such-kid")


def test_a_newly_configured_key_takes_over_and_the_old_stays_published(
    api_client: APIClient, ann: User, settings: Any
) -> None:
    # given tokens signed with the key configured so far
    old = signing_kid()

    # when the deployment configures a new key (rotation through the environment)
    settings.JWT_PRIVATE_KEY = new_ed25519_private_key_pem()

    # then it signs, and the old key still verifies what it signed
    assert signing_kid() == configured_kid() != old
    assert published_kids(api_client) == [configured_kid(), old]


def test_without_the_private_half_of_the_current_key_nothing_is_signed(ann: User, settings: Any) -> None:
    keys("rotate", "--activate-in", "0")
    SigningKey.objects.update(private_key="")

    with pytest.raises(Exception, match="private half"):
        signing_key()


def test_list_names_each_key_with_its_status(ann: User) -> None:
    first = keys("rotate", "--activate-in", "0")
    keys("retire", configured_kid())
    upcoming = keys("rotate", "--activate-in", "3600")

    lines = keys("list").splitlines()

    statuses = {line.split()[0]: line.split()[1] for line in lines}
    assert statuses == {upcoming: "next", first: "current", configured_kid(): "retired"}
