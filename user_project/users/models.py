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
    """A refresh token we issued. The token is an opaque random string handed out once; we keep only its
    SHA-256 (``token_hash``), so a copy of this table lets nobody sign in.

    ``family`` groups the tokens descended from one sign-in: each refresh spends its token
    (``rotated_at``) and issues the next one in the same family; a spent token presented again means it
    was copied, and the whole family is revoked (see ``users.services.auth_token_refresh``)."""

    class RevokedReason(models.TextChoices):
        LOGOUT = "logout", "signed out"
        REUSE = "reuse", "a spent token of its family was reused"
        ADMIN = "admin", "revoked by an administrator"

    token_hash = models.CharField("SHA-256 of the token", max_length=64, unique=True, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="refresh_tokens")
    family = models.UUIDField(db_index=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    rotated_at = models.DateTimeField(null=True, blank=True, help_text="When it was exchanged for its successor.")
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=16, choices=RevokedReason.choices, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = (models.Index(fields=("user", "-created_at"), name="users_refresh_user_created"),)

    def __str__(self) -> str:
        return f"refresh token {self.pk} of user {self.user_id}"


class SigningKey(models.Model):
    """A key that signs (or signed) access tokens; every key not retired is published in the JWKS.

    The current signing key is the newest one whose ``activated_at`` has come. A key generated by
    ``manage.py signing_keys rotate`` keeps its private half here until a newer key takes over; the key
    configured in ``JWT_PRIVATE_KEY`` is recorded with its public half only (its private half stays in the
    environment). Only public halves are needed once a key no longer signs.
    """

    kid = models.CharField("key id", max_length=64, unique=True, editable=False)
    public_key = models.CharField(max_length=64, editable=False, help_text="The raw Ed25519 public key, base64url.")
    private_key = models.TextField(blank=True, editable=False, help_text="PKCS#8 PEM while it may sign, else blank.")
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(help_text="From when it signs (until a newer key is activated).")
    retired_at = models.DateTimeField(null=True, blank=True, help_text="From when it is no longer published.")

    class Meta:
        ordering = ("-activated_at", "-id")

    def __str__(self) -> str:
        return self.kid


class LoginAttemptWindow(models.Model):
    """The sign-in attempts on one account (known or not) in its current window; see ``users.throttling``.

    In the service's own database rather than the cache, so every process of the service counts in one
    place in either mode (the embedded mode's cache is per process), and an attempt takes its slot with one
    conditional update, which the database applies to concurrent attempts one at a time.
    """

    # Hashed: a fixed length whatever was typed, and the table lists no addresses at a glance.
    account = models.CharField("SHA-256 of the normalised email", max_length=64, unique=True, editable=False)
    attempts = models.PositiveIntegerField(help_text="Attempts in the window, the refused ones not counted.")
    window_ends_at = models.DateTimeField(db_index=True)  # indexed for pruning the lapsed ones

    def __str__(self) -> str:
        return f"{self.attempts} sign-in attempt(s) until {self.window_ends_at:%Y-%m-%d %H:%M:%S}"
