"""Who the client is: the access token in ``Authorization: Bearer ...``, verified locally against the
user service's published keys (fetched once, then refreshed only for an unknown key id)."""

from __future__ import annotations

import functools
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings

from common.tokens import JwksKeySet, TokenError, verify_token

# Verifying an EdDSA token costs ~160 µs, a quarter of the gateway's own time per request, and a client
# sends the same token with every request for its whole lifetime. A token verified recently is taken on
# its exact text (any changed byte misses) for a short while: long enough to save nearly all of that work,
# short enough that a key withdrawn from the JWKS stops working exactly as soon as without the cache: an
# entry ends when the key set that verified it stops being trusted (see ``bearer_claims``).
VERIFIED_TOKEN_TTL = 60.0  # seconds
VERIFIED_TOKEN_CACHE_SIZE = 4096


@functools.cache
def key_set() -> JwksKeySet:
    """The user service's public keys, created on first use (never at import: settings may change in
    tests, and a worker that never sees a token never fetches them)."""
    return JwksKeySet(
        settings.JWKS_URL, ttl=settings.JWKS_CACHE_TTL, min_refresh_interval=settings.JWKS_MIN_REFRESH_INTERVAL
    )


class VerifiedTokens:
    """Claims of recently verified tokens. Only tokens that passed verification get in, so the size bound
    can only be reached by many genuine tokens; it is then simply emptied."""

    def __init__(self, *, ttl: float, max_size: int) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def get(self, token: str) -> dict[str, Any] | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        valid_until, claims = entry
        if time.time() >= valid_until:
            self._entries.pop(token, None)
            return None
        return claims

    def put(self, token: str, claims: dict[str, Any], *, ttl: float | None = None) -> None:
        if len(self._entries) >= self.max_size:
            self._entries.clear()
        ttl = self.ttl if ttl is None else min(ttl, self.ttl)
        # Never past the token's own expiry: from then on it is verified (and refused) again.
        self._entries[token] = (min(time.time() + ttl, float(claims["exp"])), claims)

    def clear(self) -> None:
        self._entries.clear()


verified_tokens = VerifiedTokens(ttl=VERIFIED_TOKEN_TTL, max_size=VERIFIED_TOKEN_CACHE_SIZE)


def _bearer_token(authorization: str) -> str | None:
    """The token of a well-formed ``Bearer <token>`` Authorization header value."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token and " " not in token else None


def cached_claims(authorization: str) -> dict[str, Any] | None:
    """The claims of the Authorization header's token if it was verified recently (no work, no network);
    None otherwise, when :func:`bearer_claims` has to check it."""
    token = _bearer_token(authorization)
    return verified_tokens.get(token) if token else None


def bearer_claims(authorization: str) -> dict[str, Any]:
    """The claims of the access token in an Authorization header value, or :class:`TokenError`."""
    token = _bearer_token(authorization)
    if token is None:
        raise TokenError("Use an access token: 'Authorization: Bearer <token>'.", code="invalid_token")
    claims = verified_tokens.get(token)
    if claims is None:
        keys = key_set()
        trusted_until = 0.0

        def key_for_kid(kid: str) -> Ed25519PublicKey | None:
            nonlocal trusted_until
            key, trusted_until = keys.lookup(kid)
            return key

        claims = verify_token(
            token,
            key_for_kid=key_for_kid,
            issuer=settings.JWT_ISSUER,
            audience=settings.JWT_AUDIENCE,
            token_type="access",  # noqa: S106 (a token type, not a password)
        )
        # Cached until the key set that verified the token lapses, not for a TTL from now: those keys may
        # have been fetched almost a TTL ago, and a key retired since must be refused when they lapse, as
        # it would be without the cache (README: at most JWKS_CACHE_TTL after its retirement). Clearing the
        # cache when a refresh drops a kid would not do: a token found here never asks the key set, so
        # nothing would refresh it. Keys kept past their TTL because the JWKS is unreachable give no
        # time left: their tokens are verified on every request until a fetch succeeds.
        remaining = trusted_until - time.monotonic()
        if remaining > 0:
            verified_tokens.put(token, claims, ttl=remaining)
    return claims
