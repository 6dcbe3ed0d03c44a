from io import StringIO

import pytest
from django.core.management import call_command

from users.models import User

pytestmark = pytest.mark.django_db


def test_createsuperuser_runs_non_interactively_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "Admin@Example.com")
    monkeypatch.setenv("DJANGO_SUPERUSER_NAME", "Admin")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "plum-orbit-7-lantern")

    call_command("createsuperuser", "--noinput", stdout=StringIO())

    admin = User.objects.get()
    assert admin.email == "admin@example.com"
    assert admin.name == "Admin"
    assert admin.is_staff
    assert admin.is_superuser
    assert admin.check_password("plum-orbit-7-lantern")


def test_migrations_match_the_models() -> None:
    call_command("makemigrations", "--check", "--dry-run", stdout=StringIO())
