"""The key that signs our JWTs, parsed from ``settings.JWT_PRIVATE_KEY`` on first use (never at import)."""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from common.tokens import public_jwk


@functools.cache
def signing_key() -> Ed25519PrivateKey:
    # An environment variable often carries the PEM's line breaks as literal "\n".
    pem = settings.JWT_PRIVATE_KEY.replace("\\n", "\n").strip().encode()
    try:
        key = load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise ImproperlyConfigured("JWT_PRIVATE_KEY is not a PEM private key.") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ImproperlyConfigured("JWT_PRIVATE_KEY must be an Ed25519 key (tokens are signed with EdDSA).")
    return key


@functools.cache
def current_jwk() -> dict[str, str]:
    """The public JWK of the signing key, as published in the JWKS."""
    return public_jwk(signing_key().public_key())


def public_key_for_kid(kid: str) -> Ed25519PublicKey | None:
    """The public key a token names by ``kid``: ours, or none. (Rotation would add the previous key here.)"""
    if kid != current_jwk()["kid"]:
        return None
    return signing_key().public_key()
