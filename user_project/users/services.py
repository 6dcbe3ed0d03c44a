from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NoReturn

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from common.events import publish_event
from common.tokens import sign_token
from users.errors import EmailTaken, InvalidCredentials, PasswordRejected, RefreshTokenError, TooManyAttempts
from users.keys import signing_key
from users.models import RefreshToken, User, normalize_email
from users.throttling import login_attempt_reserve, login_attempts_clear

logger = logging.getLogger(__name__)

TOKEN_TYPE = "Bearer"  # noqa: S105  the OAuth 2 token type, not a secret


@dataclass(frozen=True)
class IssuedTokens:
    access: str
    refresh: str
    expires_in: int  # seconds until the access token expires
    token_type: str = TOKEN_TYPE


def user_create(*, email: str, name: str, password: str) -> User:
    """Sign a new user up and announce ``user.created`` (through the outbox, with the account)."""
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
            # In the same transaction as the account (the outbox): both commit, or neither.
            publish_event(
                "user.created",
                {"user_id": user.id, "email": user.email, "name": user.name},
                aggregate_id=user.id,
            )
    except IntegrityError as exc:
        # Two sign-ups with the same address raced past the check above; the unique index decided.
        raise EmailTaken() from exc
    logger.info("user %s signed up", user.id)
    return user


def auth_token_obtain(*, email: str, password: str) -> IssuedTokens:
    """Exchange an email and password for an access token and a refresh token (the start of a new family).

    Attempts are counted per account (see ``users.throttling``): past the limit, every attempt on that
    account is refused with 429 until the window lapses, the right password included, or guessing would go on.
    """
    email = normalize_email(email)
    # The slot is taken before the password is checked, not the failure recorded after: the check is slow
    # on purpose, and concurrent guesses would all pass a lock test made before any of them was counted.
    locked_for = login_attempt_reserve(email=email)
    if locked_for is not None:
        raise TooManyAttempts(wait=locked_for)
    user = User.objects.filter(email=email).first()
    if user is None or not user.has_usable_password():
        # Hash anyway, so an unknown address takes as long to refuse as a wrong password.
        User().set_password(password)
        raise InvalidCredentials()  # the reserved slot is what counts the failure
    if not user.check_password(password) or not user.is_active:
        raise InvalidCredentials()

    login_attempts_clear(email=email)
    now = timezone.now()
    User.objects.filter(pk=user.pk).update(last_login=now)
    return IssuedTokens(
        access=_access_token(user=user, now=now),
        refresh=_refresh_token_issue(user=user, now=now, family=uuid.uuid4()),
        expires_in=settings.JWT_ACCESS_TOKEN_LIFETIME,
    )


def auth_token_refresh(*, refresh: str) -> IssuedTokens:
    """Spend a refresh token for a new access token and the next refresh token of its family.

    A refresh token works once. Presenting a spent one again means a copy exists (the client and someone
    else both hold it): the whole family is revoked, so whichever of the two refreshed first loses its
    session too, and ``token_reused`` is raised. Of two concurrent refreshes with one token, the
    conditional update lets exactly one through; the other counts as a reuse.
    """
    stored = RefreshToken.objects.select_related("user").filter(token_hash=_token_hash(refresh)).first()
    now = timezone.now()
    if stored is None:
        # Never issued, or its user was deleted (their tokens with them).
        raise RefreshTokenError()
    if stored.revoked_at is not None:
        raise RefreshTokenError("The refresh token has been revoked.", code="token_revoked")
    if stored.rotated_at is not None:
        _refuse_reuse(stored)
    if stored.expires_at <= now:
        raise RefreshTokenError("The refresh token has expired.", code="token_expired")
    if not stored.user.is_active:
        raise RefreshTokenError("The token's account is no longer active.", code="invalid_token")

    with transaction.atomic():
        # Claim the token (healthchecks' conditional update): of concurrent refreshes, one updates the row.
        spent = RefreshToken.objects.filter(pk=stored.pk, rotated_at__isnull=True, revoked_at__isnull=True).update(
            rotated_at=now
        )
        successor = _refresh_token_issue(user=stored.user, now=now, family=stored.family) if spent else None
    if successor is None:
        # Lost the race: another request spent it first, or a sign-out revoked it meanwhile.
        stored.refresh_from_db(fields=["rotated_at", "revoked_at"])
        if stored.revoked_at is not None:
            raise RefreshTokenError("The refresh token has been revoked.", code="token_revoked")
        _refuse_reuse(stored)
    return IssuedTokens(
        access=_access_token(user=stored.user, now=now),
        refresh=successor,
        expires_in=settings.JWT_ACCESS_TOKEN_LIFETIME,
    )


def _refuse_reuse(stored: RefreshToken) -> NoReturn:
    # Outside any transaction on purpose: the revocation must stay committed although we raise.
    revoked = refresh_token_revoke(
        tokens=RefreshToken.objects.filter(family=stored.family), reason=RefreshToken.RevokedReason.REUSE
    )
    logger.warning(
        "refresh token %s of user %s reused after rotation: revoked %s token(s) of its family",
        stored.pk,
        stored.user_id,
        revoked,
    )
    raise RefreshTokenError(
        "The refresh token was already used; its session has been revoked. Sign in again.", code="token_reused"
    )


def auth_logout(*, refresh: str) -> None:
    """Sign out the session a refresh token belongs to: the token and its whole family are revoked, so
    neither it nor any token it was rotated into works again. Access tokens already issued stay valid until
    they expire (``JWT_ACCESS_TOKEN_LIFETIME``): the gateway verifies those without asking us.

    A token we do not know, or one already revoked, is no error (RFC 7009, section 2.2): the outcome the
    client wants, that the token does not work, holds either way.
    """
    stored = RefreshToken.objects.filter(token_hash=_token_hash(refresh)).first()
    if stored is None:
        return
    revoked = refresh_token_revoke(
        tokens=RefreshToken.objects.filter(family=stored.family), reason=RefreshToken.RevokedReason.LOGOUT
    )
    logger.info("user %s signed out: revoked %s refresh token(s)", stored.user_id, revoked)


def refresh_token_revoke(*, tokens: QuerySet[RefreshToken], reason: str) -> int:
    """Revoke the given refresh tokens that are still live; returns how many were."""
    return tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now(), revoked_reason=reason)


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


def _token_hash(token: str) -> str:
    # A refresh token is 256 random bits: a plain SHA-256 cannot be reversed or guessed, no salt or slow
    # hash needed (those protect low-entropy secrets such as passwords).
    return hashlib.sha256(token.encode()).hexdigest()


def _refresh_token_issue(*, user: User, now: datetime, family: uuid.UUID) -> str:
    """A new opaque refresh token; only its hash is stored. Each one lives JWT_REFRESH_TOKEN_LIFETIME from
    its issue, so a session lasts while it is used at least that often."""
    token = secrets.token_urlsafe(32)
    RefreshToken.objects.create(
        token_hash=_token_hash(token),
        user=user,
        family=family,
        expires_at=now + timedelta(seconds=settings.JWT_REFRESH_TOKEN_LIFETIME),
    )
    return token
