import pytest
from django.utils import timezone

from messaging.models import OutboxEvent
from users.errors import EmailTaken, InvalidCredentials, PasswordRejected
from users.models import RefreshToken
from users.services import auth_token_obtain, refresh_token_revoke, user_create
from users.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def test_user_create_records_user_created_in_the_outbox_with_the_account() -> None:
    user = user_create(email="New@Example.com", name="New", password="plum-orbit-7-lantern")

    assert user.email == "new@example.com"
    event = OutboxEvent.objects.get()
    assert (event.type, event.aggregate_id, event.sent_at) == ("user.created", str(user.id), None)
    assert event.data == {"user_id": user.id, "email": "new@example.com", "name": "New"}


@pytest.mark.django_db(transaction=True)
def test_user_create_that_fails_records_no_event() -> None:
    UserFactory(email="ann@example.com")

    with pytest.raises(EmailTaken):
        user_create(email="ann@example.com", name="Ann", password="plum-orbit-7-lantern")

    assert not OutboxEvent.objects.exists()


def test_user_create_rejects_taken_email() -> None:
    UserFactory(email="ann@example.com")

    with pytest.raises(EmailTaken):
        user_create(email="Ann@example.com", name="Ann", password="plum-orbit-7-lantern")


def test_user_create_rejects_weak_password_with_field_details() -> None:
    with pytest.raises(PasswordRejected) as raised:
        user_create(email="new@example.com", name="New", password="password")

    assert list(raised.value.details) == ["password"]


def test_sign_in_records_last_login_and_a_new_token_family() -> None:
    user = UserFactory(email="ann@example.com")

    auth_token_obtain(email="ann@example.com", password=PASSWORD)
    auth_token_obtain(email="ann@example.com", password=PASSWORD)

    user.refresh_from_db()
    assert user.last_login is not None
    assert RefreshToken.objects.filter(user=user).values("family").distinct().count() == 2


def test_sign_in_refuses_user_without_usable_password() -> None:
    user = UserFactory(email="ann@example.com")
    user.set_unusable_password()
    user.save()

    with pytest.raises(InvalidCredentials):
        auth_token_obtain(email="ann@example.com", password=PASSWORD)


def test_revoking_skips_tokens_already_revoked() -> None:
    UserFactory(email="ann@example.com")
    auth_token_obtain(email="ann@example.com", password=PASSWORD)
    auth_token_obtain(email="ann@example.com", password=PASSWORD)
    earlier = timezone.now() - timezone.timedelta(days=1)
    RefreshToken.objects.filter(pk=RefreshToken.objects.first().pk).update(revoked_at=earlier)

    revoked = refresh_token_revoke(tokens=RefreshToken.objects.all(), reason=RefreshToken.RevokedReason.ADMIN)

    assert revoked == 1
    assert RefreshToken.objects.filter(revoked_at=earlier).count() == 1
    assert RefreshToken.objects.filter(revoked_reason="admin").count() == 1
