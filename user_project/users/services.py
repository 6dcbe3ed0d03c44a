from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from common.events import publish_event
from common.tokens import TokenError, sign_token, verify_token
from users.errors import EmailTaken, InvalidCredentials, PasswordRejected
from users.keys import public_key_for_kid, signing_key
from users.models import RefreshToken, User, normalize_email

logger = logging.getLogger(__name__)

TOKEN_TYPE = "Bearer"  # noqa: S105  the OAuth 2 token type, not a secret


@dataclass(frozen=True)
class IssuedTokens:
    access: str
    refresh: str | None
    expires_in: int  # seconds until the access token expires
    token_type: str = TOKEN_TYPE


def user_create(*, email: str, name: str, password: str) -> User:
    """Sign a new user up and announce ``user.created`` once the account is committed."""
    email = normalize_email(email)
    if User.objects.filter(email=email).exists():
        raise EmailTaken()
    try:
        validate_password(password, user=User(email=email, name=name))
    except DjangoValidationError as exc:
        raise PasswordRejected(details={"password": list(exc.messages)}) from exc

    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, name=name, password=password)
            event = {"user_id": user.id, "email": user.email, "name": user.name}
            # robust: the account exists whatever happens to the event; failing the response would only
            # make the client retry into "email_taken". A lost event costs the welcome email.
            transaction.on_commit(lambda: publish_event("user.created", event), robust=True)
    except IntegrityError as exc:
        # Two sign-ups with the same address raced past the check above; the unique index decided.
        raise EmailTaken() from exc
    logger.info("user %s signed up", user.id)
    return user


def auth_token_obtain(*, email: str, password: str) -> IssuedTokens:
    """Exchange an email and password for an access token and a refresh token."""
    user = User.objects.filter(email=normalize_email(email)).first()
    if user is None or not user.has_usable_password():
        # Hash anyway, so an unknown address takes as long to refuse as a wrong password.
        User().set_password(password)
        raise InvalidCredentials()
    if not user.check_password(password) or not user.is_active:
        raise InvalidCredentials()

    now = timezone.now()
    User.objects.filter(pk=user.pk).update(last_login=now)
    return IssuedTokens(
        access=_access_token(user=user, now=now),
        refresh=_refresh_token_issue(user=user, now=now, family=uuid.uuid4()),
        expires_in=settings.JWT_ACCESS_TOKEN_LIFETIME,
    )


def auth_token_refresh(*, refresh: str) -> IssuedTokens:
    """A new access token for a valid, unrevoked refresh token of an active user.

    Raises :class:`common.tokens.TokenError` (401) with a specific code otherwise.
    """
    claims = verify_token(
        refresh,
        key_for_kid=public_key_for_kid,
        issuer=settings.JWT_ISSUER,
        audience=settings.JWT_ISSUER,
        token_type="refresh",  # noqa: S106  a claim value, not a secret
    )
    try:
        jti = uuid.UUID(str(claims.get("jti")))
    except ValueError as exc:
        raise TokenError("The token is invalid.", code="invalid_token") from exc

    stored = RefreshToken.objects.select_related("user").filter(jti=jti).first()
    now = timezone.now()
    # An unknown jti is a token we revoked by deleting it (or its user); same answer as a revoked one.
    if stored is None or stored.revoked_at is not None:
        raise TokenError("The refresh token has been revoked.", code="token_revoked")
    if str(stored.user_id) != claims["sub"] or stored.expires_at <= now:
        raise TokenError("The token is invalid.", code="invalid_token")
    if not stored.user.is_active:
        raise TokenError("The token's account is no longer active.", code="invalid_token")

    return IssuedTokens(
        access=_access_token(user=stored.user, now=now),
        refresh=None,
        expires_in=settings.JWT_ACCESS_TOKEN_LIFETIME,
    )


def refresh_token_revoke(*, tokens: QuerySet[RefreshToken]) -> int:
    """Revoke the given refresh tokens that are still live; returns how many were."""
    return tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())


def _access_token(*, user: User, now: datetime) -> str:
    issued_at = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": settings.JWT_ISSUER,
        "aud": settings.JWT_AUDIENCE,
        "sub": str(user.id),
        "iat": issued_at,
        "exp": issued_at + settings.JWT_ACCESS_TOKEN_LIFETIME,
        "jti": str(uuid.uuid4()),
        "typ": "access",
        "staff": bool(user.is_staff),
    }
    return sign_token(claims, signing_key())


def _refresh_token_issue(*, user: User, now: datetime, family: uuid.UUID) -> str:
    issued_at = int(now.timestamp())
    lifetime = settings.JWT_REFRESH_TOKEN_LIFETIME
    stored = RefreshToken.objects.create(
        jti=uuid.uuid4(),
        user=user,
        family=family,
        expires_at=now + timedelta(seconds=lifetime),
    )
    claims: dict[str, Any] = {
        # The refresh token is only ever presented back to us, so we are its audience.
        "iss": settings.JWT_ISSUER,
        "aud": settings.JWT_ISSUER,
        "sub": str(user.id),
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "jti": str(stored.jti),
        "typ": "refresh",
    }
    return sign_token(claims, signing_key())
