import pytest
from django.db import IntegrityError

from users.models import User, normalize_email
from users.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_normalize_email_strips_and_lowercases() -> None:
    assert normalize_email("  Ann.Lee@Example.COM \n") == "ann.lee@example.com"


def test_create_user_stores_normalised_email_and_hashed_password() -> None:
    user = User.objects.create_user(email=" Ann@Example.com ", password="s3cret-enough", name="Ann")

    assert user.email == "ann@example.com"
    assert user.check_password("s3cret-enough")
    assert not user.is_staff
    assert not user.is_superuser


def test_create_superuser_is_staff_and_superuser() -> None:
    user = User.objects.create_superuser(email="root@example.com", password="s3cret-enough", name="Root")

    assert user.is_staff
    assert user.is_superuser


def test_create_superuser_refuses_non_staff() -> None:
    with pytest.raises(ValueError, match="is_staff"):
        User.objects.create_superuser(email="root@example.com", password="x", name="Root", is_staff=False)


def test_natural_key_lookup_ignores_case_and_spaces() -> None:
    user = UserFactory(email="ann@example.com")

    assert User.objects.get_by_natural_key(" ANN@example.com") == user


def test_database_refuses_same_email_in_another_case() -> None:
    UserFactory(email="ann@example.com")
    other = UserFactory(email="someone@example.com")

    # A write that bypasses normalisation still cannot create a case-variant duplicate.
    with pytest.raises(IntegrityError):
        User.objects.filter(pk=other.pk).update(email="ANN@example.com")
