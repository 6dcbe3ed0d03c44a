from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from django.conf import settings
from rest_framework.test import APIClient

from common.internal_auth import (
    CLOCK_LEEWAY_SECONDS,
    HEADER,
    Principal,
    mint_assertion,
    verify_assertion,
)
from common.testing import assertion_headers

SECRET = "an-internal-secret-for-these-tests-long-enough-for-every-hmac-algorithm-0123456789"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {"iss": "gateway", "aud": "orders", "iat": now, "exp": now + 60, "staff": False, "sub": "7"}
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def encode(claims: dict[str, Any], *, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def test_minted_assertion_verifies_as_the_user_it_acts_for() -> None:
    token = mint_assertion(
        issuer="gateway", audience="orders", secret=SECRET, user_id=7, is_staff=True, request_id="req-12345678"
    )

    assert verify_assertion(token, audience="orders", secret=SECRET) == Principal(id=7, is_staff=True, caller="gateway")
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience="orders")
    assert payload["rid"] == "req-12345678"
    assert payload["exp"] - payload["iat"] == 60


def test_minted_anonymous_assertion_has_no_subject() -> None:
    token = mint_assertion(issuer="gateway", audience="orders", secret=SECRET)

    principal = verify_assertion(token, audience="orders", secret=SECRET)

    assert principal == Principal(id=None, is_staff=False, caller="gateway")
    assert "sub" not in jwt.decode(token, SECRET, algorithms=["HS256"], audience="orders")


def test_assertion_expired_within_the_clock_leeway_is_accepted() -> None:
    now = int(time.time())
    token = encode(claims(iat=now - 60, exp=now - CLOCK_LEEWAY_SECONDS + 2))

    assert verify_assertion(token, audience="orders", secret=SECRET).id == 7


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (encode(claims(), secret="another-secret-entirely-" * 4), "signed with another secret"),
        (encode(claims(aud="payments")), "meant for another service"),
        (encode(claims(aud=None)), "meant for no service"),
        (encode(claims(iat=int(time.time()) - 120, exp=int(time.time()) - 30)), "expired beyond the leeway"),
        (encode(claims(exp=None)), "without an expiry"),
        (encode(claims(iss=None)), "without an issuer"),
        (encode(claims(iat=None)), "without an issue time"),
        (unsigned(claims()), "alg none"),
        (encode(claims(), algorithm="HS512"), "another HMAC algorithm"),
        (encode(claims(), algorithm="HS384"), "another HMAC algorithm"),
        (encode(claims(sub="admin")), "a non-numeric subject"),
        (encode(claims(sub="-1")), "a negative subject"),
        (encode(claims(sub="")), "an empty subject"),
        (encode(claims(sub="²")), "a non-ASCII digit"),
        (encode(claims(sub="١٢")), "non-ASCII digits"),
        (encode(claims())[:-4] + "AAAA", "a tampered signature"),
        ("not-a-jwt", "garbage"),
    ],
)
def test_invalid_assertions_are_rejected(token: str, reason: str) -> None:
    with pytest.raises(jwt.InvalidTokenError):
        verify_assertion(token, audience="orders", secret=SECRET)


def test_principal_of_a_user() -> None:
    principal = Principal(id=7, is_staff=False, caller="gateway")

    assert (principal.pk, principal.is_authenticated, principal.is_anonymous) == (7, True, False)


def test_principal_of_nobody() -> None:
    principal = Principal(id=None, is_staff=False, caller="orders")

    assert (principal.pk, principal.is_authenticated, principal.is_anonymous) == (None, False, True)


def test_assertion_headers_helper_makes_an_assertion_for_this_service() -> None:
    headers = assertion_headers(user_id=3, is_staff=True, caller="orders")

    principal = verify_assertion(headers[HEADER], audience=settings.SERVICE_NAME, secret=settings.INTERNAL_AUTH_SECRET)

    assert principal == Principal(id=3, is_staff=True, caller="orders")


# Through a view, as a service receives requests.


def test_request_acting_for_a_user_reaches_the_view_as_its_principal(api_client: APIClient) -> None:
    response = api_client.get(
        "/api/me/", headers={**assertion_headers(user_id=7, is_staff=True), "X-Request-ID": "req-12345678"}
    )

    assert response.status_code == 200
    assert response.json() == {"id": 7, "is_staff": True, "caller": "gateway", "request_id": "req-12345678"}


@pytest.mark.parametrize("path", ["/api/me/", "/api/public/", "/api/internal/"])
def test_request_without_an_assertion_is_refused_even_by_public_views(api_client: APIClient, path: str) -> None:
    response = api_client.get(path)

    assert response.status_code == 401
    assert response.json()["error"] == {
        "code": "gateway_required",
        "message": "This service only accepts requests through the gateway.",
        "details": {},
    }
    assert response["WWW-Authenticate"] == 'ServiceAssertion realm="internal"'


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        mint_assertion(issuer="gateway", audience="payments", secret=settings.INTERNAL_AUTH_SECRET, user_id=7),
        mint_assertion(issuer="gateway", audience="test", secret="not-the-configured-secret-at-all", user_id=7),
    ],
)
def test_request_with_an_invalid_assertion_is_refused(api_client: APIClient, token: str) -> None:
    response = api_client.get("/api/public/", headers={HEADER: token})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_service_assertion"
    assert response["WWW-Authenticate"] == 'ServiceAssertion realm="internal"'


def test_a_client_sent_user_header_means_nothing(api_client: APIClient) -> None:
    response = api_client.get("/api/me/", headers={"X-User-Id": "7"})

    assert response.status_code == 401


def test_anonymous_request_to_an_end_user_view_is_not_authenticated(api_client: APIClient) -> None:
    response = api_client.get("/api/me/", headers=assertion_headers())

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_anonymous_request_to_a_public_view_is_served(api_client: APIClient) -> None:
    response = api_client.get("/api/public/", headers=assertion_headers())

    assert response.status_code == 200
    assert response.json()["id"] is None


def test_allowed_caller_service_reaches_an_internal_view(api_client: APIClient) -> None:
    response = api_client.get("/api/internal/", headers=assertion_headers(caller="orders"))

    assert response.status_code == 200
    assert response.json()["caller"] == "orders"


@pytest.mark.parametrize("caller", ["gateway", "payments"])
def test_other_callers_are_forbidden_from_an_internal_view(api_client: APIClient, caller: str) -> None:
    # Even acting for a staff user: the gateway must never reach service-only endpoints for a client.
    response = api_client.get("/api/internal/", headers=assertion_headers(user_id=1, is_staff=True, caller=caller))

    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "permission_denied",
        "message": "This endpoint is for other services only.",
        "details": {},
    }


@pytest.mark.parametrize(
    "minted",
    [
        {"user_id": 7, "is_staff": True, "request_id": "req-0123456789"},
        {"user_id": None, "is_staff": False, "request_id": None},
        {"user_id": 12345678901234, "is_staff": False, "request_id": "ü-not-ascii-é"},
    ],
)
def test_a_minted_assertion_is_byte_for_byte_what_pyjwt_encodes_and_verifies(minted: dict[str, Any]) -> None:
    # given the claims the gateway mints with its pre-keyed HMAC
    token = mint_assertion(issuer="gateway", audience="orders", secret=SECRET, **minted)

    # then PyJWT, given the same claims, writes the same token, and the services' verifier accepts it
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], audience="orders")
    assert token == jwt.encode(decoded, SECRET, algorithm="HS256")
    assert verify_assertion(token, audience="orders", secret=SECRET) == Principal(
        id=minted["user_id"], is_staff=minted["is_staff"], caller="gateway"
    )
    # and a token minted with another secret is refused
    other = mint_assertion(issuer="gateway", audience="orders", secret=SECRET + "-other", **minted)
    with pytest.raises(jwt.InvalidSignatureError):
        verify_assertion(other, audience="orders", secret=SECRET)
