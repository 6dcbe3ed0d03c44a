"""Service assertions: how a service knows a request came through the gateway or another service.

The gateway verifies the client's access token (EdDSA, from the user service's JWKS) and then calls the
service with a short-lived assertion in ``X-Service-Assertion``: a JWT signed with HS256 and the
``INTERNAL_AUTH_SECRET`` that only the system's processes hold, naming the calling service (``iss``), the
target service (``aud``), the end user (``sub``, absent for anonymous calls), whether they are staff, and
the request id. Services accept API calls only with a valid assertion for themselves; a client header such
as ``X-User-Id`` means nothing to them, and the gateway strips any client-sent ``X-Service-Assertion``.
A service calling another service mints its own assertion on behalf of the same user.

Why not have every service re-verify the client's JWT? A call made by a service on its own (a retry, a
background step) has no client token to relay; one mechanism serves both paths, and the audience binding
means an assertion captured at one service cannot be replayed at another.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from django.conf import settings
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

HEADER = "X-Service-Assertion"
ALGORITHM = "HS256"
LIFETIME_SECONDS = 60
CLOCK_LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: an end user (``id``), or nobody for anonymous calls, and which service
    called. Services hold no copy of the user table, so this stands in for ``request.user``."""

    id: int | None
    is_staff: bool
    caller: str

    @property
    def pk(self) -> int | None:
        return self.id

    @property
    def is_authenticated(self) -> bool:
        return self.id is not None

    @property
    def is_anonymous(self) -> bool:
        return self.id is None


def mint_assertion(
    *,
    issuer: str,
    audience: str,
    secret: str,
    user_id: int | None = None,
    is_staff: bool = False,
    request_id: str | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + LIFETIME_SECONDS,
        "staff": bool(is_staff),
    }
    if user_id is not None:
        claims["sub"] = str(user_id)
    if request_id:
        claims["rid"] = request_id
    return _encode_hs256(claims, secret)


# The gateway mints one assertion per proxied request. PyJWT's encode re-derives the HMAC key and checks it
# is not a PEM or DER public key on every call (an HS256 guard for keys of unknown origin; this secret is our
# own); with the key prepared once per secret, minting costs about a third. The output is byte for byte what
# ``jwt.encode(claims, secret, algorithm="HS256")`` gives (header keys sorted, compact JSON, unpadded
# base64url; tested), so any JWT library verifies it.
_HEADER_SEGMENT = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


@functools.lru_cache(maxsize=8)
def _keyed_hmac(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


def _encode_hs256(claims: dict[str, Any], secret: str) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).rstrip(b"=")
    signing_input = _HEADER_SEGMENT + b"." + payload
    mac = _keyed_hmac(secret).copy()  # a copy of the keyed state: thread-safe, the key is not re-hashed
    mac.update(signing_input)
    signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode("ascii")


def verify_assertion(token: str, *, audience: str, secret: str) -> Principal:
    """Raise ``jwt.InvalidTokenError`` unless ``token`` is a current assertion for ``audience``."""
    claims = jwt.decode(
        token,
        secret,
        algorithms=[ALGORITHM],
        audience=audience,
        leeway=CLOCK_LEEWAY_SECONDS,
        options={"require": ["iss", "aud", "iat", "exp"]},
    )
    subject = claims.get("sub")
    # isascii too: str.isdigit() also accepts digits int() refuses ("²") or reads as others ("٣" is 3).
    if subject is not None and not (str(subject).isascii() and str(subject).isdigit()):
        raise jwt.InvalidTokenError("sub must be a user id")
    return Principal(
        id=int(subject) if subject is not None else None,
        is_staff=bool(claims.get("staff", False)),
        caller=str(claims["iss"]),
    )


class ServiceAssertionAuthentication(BaseAuthentication):
    """Every API request must carry a valid assertion; without one it is refused even for views that
    allow anonymous users, because it did not come through the gateway."""

    def authenticate(self, request: Request) -> tuple[Principal, Principal]:
        token = request.headers.get(HEADER)
        if not token:
            raise exceptions.AuthenticationFailed(
                "This service only accepts requests through the gateway.", code="gateway_required"
            )
        try:
            principal = verify_assertion(token, audience=settings.SERVICE_NAME, secret=settings.INTERNAL_AUTH_SECRET)
        except jwt.InvalidTokenError as exc:
            raise exceptions.AuthenticationFailed(
                "The service assertion is invalid or expired.", code="invalid_service_assertion"
            ) from exc
        return principal, principal

    def authenticate_header(self, request: Request) -> str:
        return 'ServiceAssertion realm="internal"'


class IsEndUser(BasePermission):
    """The request acts for a signed-in user (the gateway verified their access token)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not getattr(request.user, "is_authenticated", False):
            # 401, not DRF's 403: the caller is anonymous, not forbidden.
            raise exceptions.NotAuthenticated()
        return True


class IsCallerService(BasePermission):
    """Only the services listed in the view's ``allowed_callers`` may call it (never the gateway on a
    client's behalf)."""

    message = "This endpoint is for other services only."

    def has_permission(self, request: Request, view: Any) -> bool:
        principal = request.user
        return isinstance(principal, Principal) and principal.caller in getattr(view, "allowed_callers", ())
