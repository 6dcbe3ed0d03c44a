"""The keys that sign our access tokens, and the JWKS that publishes them.

Keys live in :class:`users.models.SigningKey`. The key configured in ``settings.JWT_PRIVATE_KEY`` (from the
environment in production, generated under var/secrets/ in development) is recorded there the first time
it is seen, and signs until ``manage.py signing_keys rotate`` activates a newer one; every key not retired
stays in the JWKS, so tokens it signed keep verifying until they expire. Nothing is read at import.
"""

from __future__ import annotations

import base64
import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from common.errors import ApplicationError
from common.tokens import public_jwk
from users.models import SigningKey

logger = logging.getLogger(__name__)


class SigningKeyError(ApplicationError):
    code = "signing_key_error"
    message = "The signing key operation is not possible."


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    activated_at: datetime
    retired_at: datetime | None
    status: str  # "current", "next" (published, signs from activated_at), "published", "retired"


@functools.lru_cache(maxsize=8)
def _parse_private_key(pem: str) -> Ed25519PrivateKey:
    # An environment variable often carries the PEM's line breaks as literal "\n".
    try:
        key = load_pem_private_key(pem.replace("\\n", "\n").strip().encode(), password=None)
    except ValueError as exc:
        raise ImproperlyConfigured("The signing key is not a PEM private key.") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ImproperlyConfigured("The signing key must be an Ed25519 key (tokens are signed with EdDSA).")
    return key


def configured_key() -> Ed25519PrivateKey:
    """The key in ``settings.JWT_PRIVATE_KEY``."""
    return _parse_private_key(settings.JWT_PRIVATE_KEY)


def _record_configured_key() -> None:
    """Record the configured key if this database has never seen it; a newly configured key becomes the
    current one (that is how a deployment rotates through the environment). A retired configured key stays
    retired: its row is found, so it is not recorded again."""
    jwk = public_jwk(configured_key().public_key())
    if SigningKey.objects.filter(kid=jwk["kid"]).exists():
        return
    try:
        with transaction.atomic():
            SigningKey.objects.create(kid=jwk["kid"], public_key=jwk["x"], activated_at=timezone.now())
    except IntegrityError:
        pass  # another process recorded it first
    else:
        logger.info("recorded the configured signing key %s", jwk["kid"])


def signing_key() -> Ed25519PrivateKey:
    """The key that signs tokens now: the newest published key whose activation time has come."""
    _record_configured_key()
    current = (
        SigningKey.objects.filter(retired_at__isnull=True, activated_at__lte=timezone.now())
        .order_by("-activated_at", "-id")
        .first()
    )
    if current is None:
        raise ImproperlyConfigured("No signing key is active: run `manage.py signing_keys rotate`.")
    if current.private_key:
        return _parse_private_key(current.private_key)
    key = configured_key()
    if public_jwk(key.public_key())["kid"] != current.kid:
        raise ImproperlyConfigured(f"The private half of the current signing key {current.kid} is not available.")
    return key


def published_jwks() -> list[dict[str, str]]:
    """The public JWK of every key not retired: the current one, the next one, and those whose tokens may
    still be live."""
    _record_configured_key()
    return [_jwk(key) for key in SigningKey.objects.filter(retired_at__isnull=True).order_by("-activated_at", "-id")]


def _jwk(key: SigningKey) -> dict[str, str]:
    raw = base64.urlsafe_b64decode(key.public_key + "=" * (-len(key.public_key) % 4))
    return public_jwk(Ed25519PublicKey.from_public_bytes(raw))


def signing_key_rotate(*, activate_in: float = 0) -> SigningKey:
    """Generate a key and publish it at once; it signs from ``activate_in`` seconds on.

    Publishing before signing lets every verifier learn the key before it meets a token signed with it;
    ``settings.JWT_KEY_ACTIVATION_DELAY`` is the default delay. Keys this one supersedes lose their private
    half when it activates (see :func:`signing_keys_forget_superseded`): only their public half is needed.
    """
    _record_configured_key()
    private = Ed25519PrivateKey.generate()
    jwk = public_jwk(private.public_key())
    key = SigningKey.objects.create(
        kid=jwk["kid"],
        public_key=jwk["x"],
        private_key=private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode(),
        activated_at=timezone.now() + timedelta(seconds=activate_in),
    )
    logger.info("signing key %s published, signing from %s", key.kid, key.activated_at.isoformat())
    signing_keys_forget_superseded()
    return key


def signing_keys_forget_superseded() -> int:
    """Blank the private half of every key an active newer key has superseded; returns how many."""
    current = (
        SigningKey.objects.filter(retired_at__isnull=True, activated_at__lte=timezone.now())
        .order_by("-activated_at", "-id")
        .first()
    )
    if current is None:
        return 0
    older = Q(activated_at__lt=current.activated_at) | Q(activated_at=current.activated_at, id__lt=current.id)
    return SigningKey.objects.filter(older).exclude(private_key="").update(private_key="")


def signing_key_retire(*, kid: str) -> SigningKey:
    """Stop publishing a key: tokens it signed are refused once verifiers' caches lapse. The key signing now
    cannot be retired (rotate first)."""
    _record_configured_key()
    key = SigningKey.objects.filter(kid=kid).first()
    if key is None:
        raise SigningKeyError(f"No signing key {kid}.", code="unknown_key")
    if key.retired_at is not None:
        return key
    if signing_key_list_info(kid=kid)[0].status == "current":
        raise SigningKeyError(f"{kid} signs tokens now; rotate to another key first.", code="key_in_use")
    key.retired_at = timezone.now()
    key.save(update_fields=["retired_at"])
    logger.info("signing key %s retired", kid)
    return key


def signing_key_list_info(*, kid: str | None = None) -> list[KeyInfo]:
    """Every key (or the one named), newest first, with its status."""
    _record_configured_key()
    now = timezone.now()
    keys = list(SigningKey.objects.order_by("-activated_at", "-id"))
    current = next((k for k in keys if k.retired_at is None and k.activated_at <= now), None)
    infos = []
    for key in keys:
        if key.retired_at is not None:
            status = "retired"
        elif key is current:
            status = "current"
        elif key.activated_at > now:
            status = "next"
        else:
            status = "published"
        if kid is None or key.kid == kid:
            infos.append(KeyInfo(kid=key.kid, activated_at=key.activated_at, retired_at=key.retired_at, status=status))
    return infos
