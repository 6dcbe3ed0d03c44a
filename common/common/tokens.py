"""End-user access tokens: EdDSA JWTs issued by the user service, verified with its published JWKS.

The algorithm is pinned (never read from the token), ``exp``/``iat``/``iss``/``aud``/``sub`` are required,
and the key is chosen by ``kid`` from keys fetched only from the configured JWKS URL: nothing in a token
can make us fetch anything or pick another algorithm.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common.errors import ApplicationError

logger = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
# Header parameters that point at keys elsewhere: we never follow them, so a token carrying one is refused
# rather than silently verified against something its author did not intend.
_FORBIDDEN_HEADER_PARAMS = ("jku", "x5u", "jwk", "x5c")


class TokenError(ApplicationError):
    status_code = 401
    code = "invalid_token"
    message = "The access token is invalid."


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The JWK of an Ed25519 public key, with its RFC 7638 thumbprint as ``kid``."""
    x = _b64url(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))
    # RFC 7638: the required members, lexicographic order, no whitespace.
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    kid = _b64url(hashlib.sha256(canonical.encode()).digest())
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": ALGORITHM}


def sign_token(claims: dict[str, Any], private_key: Ed25519PrivateKey) -> str:
    kid = public_jwk(private_key.public_key())["kid"]
    return jwt.encode(claims, private_key, algorithm=ALGORITHM, headers={"kid": kid, "typ": "JWT"})


def verify_token(
    token: str,
    *,
    key_for_kid: Callable[[str], Ed25519PublicKey | None],
    issuer: str,
    audience: str,
    token_type: str,
) -> dict[str, Any]:
    """Return the claims of a valid token of ``token_type`` or raise :class:`TokenError`."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as exc:  # DecodeError, and e.g. a "kid" that is not a string
        raise TokenError("The token is malformed.", code="malformed_token") from exc
    if header.get("alg") != ALGORITHM:
        raise TokenError("The token's algorithm is not accepted.", code="invalid_algorithm")
    if any(param in header for param in _FORBIDDEN_HEADER_PARAMS):
        raise TokenError("The token names an external key, which is not accepted.", code="forbidden_header")
    kid = header.get("kid")
    key = key_for_kid(kid) if isinstance(kid, str) else None
    if key is None:
        raise TokenError("The token was signed with an unknown key.", code="unknown_key")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=5,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("The token has expired.", code="token_expired") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"The token has no '{exc.claim}' claim.", code="missing_claim") from exc
    except jwt.InvalidAudienceError as exc:
        raise TokenError("The token is meant for another audience.", code="invalid_audience") from exc
    except jwt.InvalidIssuerError as exc:
        raise TokenError("The token is from another issuer.", code="invalid_issuer") from exc
    except jwt.InvalidSignatureError as exc:
        # A changed header, payload or signature: the signature no longer matches.
        raise TokenError("The token's signature does not verify.", code="invalid_signature") from exc
    except jwt.ImmatureSignatureError as exc:
        raise TokenError("The token is not valid yet.", code="token_not_yet_valid") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenError("The token is invalid.", code="invalid_token") from exc
    if claims.get("typ") != token_type:
        raise TokenError(f"An {token_type} token is required.", code="wrong_token_type")
    # isascii too: str.isdigit() also accepts digits int() refuses ("²") or reads as others ("٣" is 3).
    if not (str(claims["sub"]).isascii() and str(claims["sub"]).isdigit()):
        raise TokenError("The token's subject is invalid.", code="invalid_token")
    return claims


class JwksKeySet:
    """Public keys from a JWKS URL, cached for ``ttl`` seconds.

    An unknown ``kid`` triggers a refresh (so a newly published key works without a restart), but at most
    once per ``min_refresh_interval``: a flood of tokens with made-up kids costs one fetch, not one each.
    A failed refresh keeps the keys we had.
    """

    def __init__(self, url: str, *, ttl: float = 300, min_refresh_interval: float = 10, timeout: float = 2) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refresh_interval = min_refresh_interval
        self.timeout = timeout
        # The keys and when they were fetched (time.monotonic()), replaced together as one tuple: a reader
        # never pairs one fetch's keys with another fetch's time (see ``lookup``).
        self._fetched: tuple[dict[str, Ed25519PublicKey], float] = ({}, 0.0)
        self._attempted_at = -min_refresh_interval
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._session.trust_env = False

    def __call__(self, kid: str) -> Ed25519PublicKey | None:
        return self.lookup(kid)[0]

    def lookup(self, kid: str) -> tuple[Ed25519PublicKey | None, float]:
        """The key for ``kid`` (None: not published), and until when the key set it came from is trusted,
        on ``time.monotonic()``'s clock: its fetch time plus ``ttl``, after which a withdrawn key is refused.
        A cache of what the key verified must end then too. The time is in the past when the keys are
        older than that because the JWKS could not be fetched again (the keys we had are still used)."""
        now = time.monotonic()
        keys, fetched_at = self._fetched
        if kid in keys and now - fetched_at < self.ttl:
            return keys[kid], fetched_at + self.ttl
        self._refresh(now)
        keys, fetched_at = self._fetched
        return keys.get(kid), fetched_at + self.ttl

    def _refresh(self, now: float) -> None:
        with self._lock:
            if now - self._attempted_at < self.min_refresh_interval:
                return
            self._attempted_at = now
            try:
                response = self._session.get(self.url, timeout=self.timeout)
                response.raise_for_status()
                self._fetched = (parse_jwks(response.json()), now)
            except (requests.RequestException, ValueError) as exc:
                logger.warning("Could not refresh JWKS from %s: %s", self.url, exc)


def parse_jwks(document: Any) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 keys of a JWK set by ``kid``, skipping other keys; ``ValueError`` if it is not a key set."""
    if not isinstance(document, dict) or not isinstance(document.get("keys", []), list):
        raise ValueError("not a JWK set")
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in document.get("keys", []):
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        if not isinstance(jwk.get("kid"), str) or not isinstance(jwk.get("x"), str):
            continue
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(raw)
    return keys
