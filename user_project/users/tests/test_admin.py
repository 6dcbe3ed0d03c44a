from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from users.models import RefreshToken, SigningKey, User
from users.services import auth_token_obtain
from users.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def refresh_token(db: Any) -> RefreshToken:
    UserFactory(email="ann@example.com")
    auth_token_obtain(email="ann@example.com", password=PASSWORD)
    return RefreshToken.objects.get()


def test_user_changelist_renders_and_searches(admin_client: Client) -> None:
    UserFactory(email="findme@example.com")

    response = admin_client.get(reverse("admin:users_user_changelist"), {"q": "findme"})

    assert response.status_code == 200
    assert b"findme@example.com" in response.content


def test_user_change_page_renders(admin_client: Client) -> None:
    user = UserFactory()

    response = admin_client.get(reverse("admin:users_user_change", args=[user.pk]))

    assert response.status_code == 200


def test_user_add_page_renders(admin_client: Client) -> None:
    response = admin_client.get(reverse("admin:users_user_add"))

    assert response.status_code == 200


def test_user_add_creates_user_with_password_and_normalised_email(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:users_user_add"),
        {
            "email": " New.Staff@Example.com ",
            "name": "New Staff",
            "usable_password": "true",
            "password1": "plum-orbit-7-lantern",
            "password2": "plum-orbit-7-lantern",
        },
    )

    assert response.status_code == 302
    created = User.objects.get(email="new.staff@example.com")
    assert created.name == "New Staff"
    assert created.check_password("plum-orbit-7-lantern")


def test_user_add_refuses_email_taken_in_another_case(admin_client: Client) -> None:
    UserFactory(email="ann@example.com")

    response = admin_client.post(
        reverse("admin:users_user_add"),
        {
            "email": "ANN@example.com",
            "name": "Twin",
            "usable_password": "true",
            "password1": "plum-orbit-7-lantern",
            "password2": "plum-orbit-7-lantern",
        },
    )

    assert response.status_code == 200
    assert User.objects.filter(email="ann@example.com").count() == 1


def test_refresh_token_changelist_and_read_only_change_page_render(
    admin_client: Client, refresh_token: RefreshToken
) -> None:
    changelist = admin_client.get(reverse("admin:users_refreshtoken_changelist"))
    change = admin_client.get(reverse("admin:users_refreshtoken_change", args=[refresh_token.pk]))
    add = admin_client.get(reverse("admin:users_refreshtoken_add"))

    assert changelist.status_code == 200
    assert change.status_code == 200
    assert b'name="_save"' not in change.content
    assert add.status_code == 403


def test_refresh_token_admin_action_revokes(admin_client: Client, refresh_token: RefreshToken) -> None:
    response = admin_client.post(
        reverse("admin:users_refreshtoken_changelist"),
        {"action": "revoke", "_selected_action": [refresh_token.pk]},
    )

    assert response.status_code == 302
    refresh_token.refresh_from_db()
    assert refresh_token.revoked_at is not None


def test_signing_keys_are_listed_read_only_without_their_private_half(
    admin_client: Client, refresh_token: RefreshToken
) -> None:
    key = SigningKey.objects.get()

    listing = admin_client.get(reverse("admin:users_signingkey_changelist"))
    page = admin_client.get(reverse("admin:users_signingkey_change", args=[key.pk]))

    assert listing.status_code == 200
    assert key.kid.encode() in listing.content
    assert page.status_code == 200
    assert b"PRIVATE KEY" not in page.content
    assert admin_client.get(reverse("admin:users_signingkey_add")).status_code == 403
