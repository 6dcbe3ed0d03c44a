from __future__ import annotations

from typing import Any, ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


def normalize_email(email: str) -> str:
    """The one spelling of an address we store and look up: stripped and lowercased throughout.

    Lowercasing the local part too is stricter than RFC 5321 but matches every mailbox provider people
    sign up with, and it makes "Ann@x.org" and "ann@x.org" one account.
    """
    return email.strip().lower()


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **fields: Any) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=normalize_email(email), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **fields: Any) -> User:
        fields.setdefault("is_staff", False)
        fields.setdefault("is_superuser", False)
        return self._create(email, password, **fields)

    def create_superuser(self, email: str, password: str | None = None, **fields: Any) -> User:
        fields.setdefault("is_staff", True)
        fields.setdefault("is_superuser", True)
        if fields["is_staff"] is not True or fields["is_superuser"] is not True:
            raise ValueError("A superuser must have is_staff=True and is_superuser=True.")
        return self._create(email, password, **fields)

    def get_by_natural_key(self, username: str | None) -> User:
        # Sign-in forms (admin, createsuperuser's duplicate check) pass the address as typed.
        return self.get(email=normalize_email(username or ""))


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField("email address", max_length=254, unique=True)
    name = models.CharField(max_length=150)
    is_active = models.BooleanField(
        default=True, help_text="Inactive users cannot sign in and are treated as nonexistent by the API."
    )
    is_staff = models.BooleanField(
        default=False, help_text="Staff can sign in to the admin and read every user's record."
    )
    date_joined = models.DateTimeField(default=timezone.now)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = ["name"]

    class Meta:
        ordering = ("id",)
        constraints = (
            # Emails are stored normalised, so this is a guard against writes that bypass normalisation.
            models.UniqueConstraint(Lower("email"), name="users_user_email_ci_unique"),
        )

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        # Django's own AbstractUser normalises the email here too: model forms (the admin) call it
        # before their uniqueness checks, so those check the stored spelling.
        super().clean()
        self.email = normalize_email(self.email)

    def get_full_name(self) -> str:
        return self.name

    def get_short_name(self) -> str:
        return self.name


class RefreshToken(models.Model):
    """A refresh token we issued. The token itself is a signed JWT; the row (found by its ``jti``) is what
    lets us revoke it before it expires. ``family`` groups the tokens descended from one sign-in, for
    rotation with reuse detection."""

    jti = models.UUIDField("token id", unique=True, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="refresh_tokens")
    family = models.UUIDField(db_index=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = (models.Index(fields=("user", "-created_at"), name="users_refresh_user_created"),)

    def __str__(self) -> str:
        return f"refresh token {self.jti} of user {self.user_id}"
