"""Tokens the gateway must refuse: each is a 401 with a telling code, and nothing reaches a service."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.test import Client

from common.tokens import public_jwk, sign_token
from proxy.auth import VerifiedTokens, key_set
from proxy.tests.upstream_stub import StubUpstream
from proxy.tests.utils import access_claims, json_of


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _alg_none(key: Ed25519PrivateKey) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": public_jwk(key.public_key())["kid"]}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(access_claims()).encode())}."


def _hs256_with_public_key(key: Ed25519PrivateKey) -> str:
    # The classic confusion attack: an HMAC "signed" with the verifier's public key.
    public_bytes = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    header = {"alg": "HS256", "typ": "JWT", "kid": public_jwk(key.public_key())["kid"]}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(access_claims()).encode())}"
    signature = hmac.new(public_bytes, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _with_jku(key: Ed25519PrivateKey) -> str:
    headers = {"kid": public_jwk(key.public_key())["kid"], "jku": "http://evil.example/jwks.json"}
    return jwt.encode(access_claims(), key, algorithm="EdDSA", headers=headers)


def _with_x5u(key: Ed25519PrivateKey) -> str:
    headers = {"kid": public_jwk(key.public_key())["kid"], "x5u": "http://evil.example/cert.pem"}
    return jwt.encode(access_claims(), key, algorithm="EdDSA", headers=headers)


def _tampered_signature(key: Ed25519PrivateKey) -> str:
    header, payload, signature = sign_token(access_claims(), key).split(".")
    flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
    flipped[0] ^= 1
    return f"{header}.{payload}.{_b64(bytes(flipped))}"


def _tampered(key: Ed25519PrivateKey) -> str:
    header, _, signature = sign_token(access_claims(sub="7"), key).split(".")
    payload = _b64(json.dumps(access_claims(sub="1", staff=True)).encode())
    return f"{header}.{payload}.{signature}"


TOKENS: dict[str, tuple[Callable[[Ed25519PrivateKey], str], str]] = {
    "alg none": (_alg_none, "invalid_algorithm"),
    "HS256 signed with the public key": (_hs256_with_public_key, "invalid_algorithm"),
    "expired": (lambda key: sign_token(access_claims(exp=int(time.time()) - 60), key), "token_expired"),
    "missing exp": (lambda key: sign_token(access_claims(exp=None), key), "missing_claim"),
    "missing sub": (lambda key: sign_token(access_claims(sub=None), key), "missing_claim"),
    "wrong audience": (lambda key: sign_token(access_claims(aud="another-api"), key), "invalid_audience"),
    "wrong issuer": (lambda key: sign_token(access_claims(iss="someone-else"), key), "invalid_issuer"),
    "unknown key": (lambda key: sign_token(access_claims(), Ed25519PrivateKey.generate()), "unknown_key"),
    "jku header": (_with_jku, "forbidden_header"),
    "x5u header": (_with_x5u, "forbidden_header"),
    "tampered payload": (_tampered, "invalid_signature"),
    "tampered signature": (_tampered_signature, "invalid_signature"),
    "garbage": (lambda key: "not.a.jwt", "malformed_token"),
    "header not JSON": (
        lambda key: f"{_b64(b'{alg')}.{sign_token(access_claims(), key).split('.', 1)[1]}",
        "malformed_token",
    ),
    "refresh token": (lambda key: sign_token(access_claims(typ="refresh"), key), "wrong_token_type"),
}


@pytest.mark.parametrize("path", ["/api/v1/orders/", "/api/v1/users/7/"], ids=["required", "optional"])
@pytest.mark.parametrize("case", list(TOKENS))
def test_a_bad_token_is_401_and_reaches_no_service(
    client: Client, stubs: dict[str, StubUpstream], signing_key: Ed25519PrivateKey, case: str, path: str
) -> None:
    # given
    make, code = TOKENS[case]

    # when
    response = client.get(path, headers={"Authorization": f"Bearer {make(signing_key)}"})

    # then
    assert response.status_code == 401
    assert json_of(response)["error"]["code"] == code
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert all(not stub.received for stub in stubs.values())


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "Token abc"])
def test_an_authorization_header_without_a_bearer_token_is_401(
    client: Client, stubs: dict[str, StubUpstream], authorization: str
) -> None:
    response = client.get("/api/v1/users/7/", headers={"Authorization": authorization})

    assert response.status_code == 401
    assert json_of(response)["error"]["code"] == "invalid_token"
    assert all(not stub.received for stub in stubs.values())


def test_the_bearer_scheme_is_case_insensitive(client: Client, orders: StubUpstream, make_token: Any) -> None:
    response = client.get("/api/v1/orders/", headers={"Authorization": f"bearer {make_token()}"})

    assert response.status_code == 200


def test_keys_are_fetched_once_for_many_requests(
    client: Client, users: StubUpstream, make_token: Callable[..., str]
) -> None:
    for sub in ("1", "2", "3"):
        response = client.get("/api/v1/orders/", headers={"Authorization": f"Bearer {make_token(sub=sub)}"})
        assert response.status_code == 200

    assert users.jwks_fetches == 1


def test_a_recently_verified_token_is_not_verified_again(
    client: Client, users: StubUpstream, make_token: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a token the gateway has verified, and keys it can no longer fetch
    headers = {"Authorization": f"Bearer {make_token()}"}
    assert client.get("/api/v1/orders/", headers=headers).status_code == 200
    key_set.cache_clear()
    monkeypatch.setattr(users, "jwks", {"keys": []})

    # when / then: the same token is still accepted, any other one is checked and refused
    assert client.get("/api/v1/orders/", headers=headers).status_code == 200
    other = client.get("/api/v1/orders/", headers={"Authorization": f"Bearer {make_token(sub='8')}"})
    assert json_of(other)["error"]["code"] == "unknown_key"


def test_a_change_to_a_verified_token_is_not_taken_from_the_cache(
    client: Client, signing_key: Ed25519PrivateKey
) -> None:
    token = sign_token(access_claims(sub="7"), signing_key)
    assert client.get("/api/v1/orders/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    header, _, signature = token.split(".")

    forged = f"{header}.{_b64(json.dumps(access_claims(sub='1')).encode())}.{signature}"
    response = client.get("/api/v1/orders/", headers={"Authorization": f"Bearer {forged}"})

    assert response.status_code == 401


def test_cached_claims_expire_with_the_token() -> None:
    cache = VerifiedTokens(ttl=60, max_size=10)
    cache.put("expiring", access_claims(exp=int(time.time()) - 1))
    cache.put("fresh", access_claims())

    assert cache.get("expiring") is None
    assert cache.get("fresh") is not None


def test_the_cache_never_grows_past_its_bound() -> None:
    cache = VerifiedTokens(ttl=60, max_size=3)
    for number in range(10):
        cache.put(f"token-{number}", access_claims())

    assert len(cache._entries) <= 3
    assert cache.get("token-9") is not None


def test_a_key_newly_published_by_the_user_service_is_accepted_without_a_restart(
    client: Client,
    users: StubUpstream,
    signing_key: Ed25519PrivateKey,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a gateway that has fetched the keys, and then a rotation at the user service (which publishes a
    # key longer than the minimum refresh interval before signing with it: JWT_KEY_ACTIVATION_DELAY)
    settings.JWKS_MIN_REFRESH_INTERVAL = 0.2
    key_set.cache_clear()
    assert (
        client.get(
            "/api/v1/orders/", headers={"Authorization": f"Bearer {sign_token(access_claims(), signing_key)}"}
        ).status_code
        == 200
    )
    rotated = Ed25519PrivateKey.generate()
    monkeypatch.setattr(
        users, "jwks", {"keys": [public_jwk(rotated.public_key()), public_jwk(signing_key.public_key())]}
    )

    time.sleep(0.3)

    # when a token signed with the new key arrives
    response = client.get(
        "/api/v1/orders/", headers={"Authorization": f"Bearer {sign_token(access_claims(), rotated)}"}
    )

    # then its unknown kid made the gateway fetch the keys again
    assert response.status_code == 200
    assert users.jwks_fetches == 2


def test_a_key_the_user_service_stopped_publishing_is_refused_once_the_cache_lapses(
    client: Client, users: StubUpstream, signing_key: Ed25519PrivateKey, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a short key cache, and a token the gateway has accepted (and so cached)
    settings.JWKS_CACHE_TTL = 0.5
    settings.JWKS_MIN_REFRESH_INTERVAL = 0.1
    key_set.cache_clear()
    headers = {"Authorization": f"Bearer {sign_token(access_claims(), signing_key)}"}
    assert client.get("/api/v1/orders/", headers=headers).status_code == 200

    # when the key is retired at the user service
    monkeypatch.setattr(users, "jwks", {"keys": [public_jwk(Ed25519PrivateKey.generate().public_key())]})
    still = client.get("/api/v1/orders/", headers=headers)
    time.sleep(0.6)
    after = client.get("/api/v1/orders/", headers=headers)

    # then the same token stops working once the TTL has passed
    assert still.status_code == 200
    assert after.status_code == 401
    assert json_of(after)["error"]["code"] == "unknown_key"


def test_a_token_cached_late_in_the_key_sets_life_is_refused_once_that_key_set_lapses(
    client: Client, users: StubUpstream, signing_key: Ed25519PrivateKey, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given keys fetched at t=0 with a 0.6 s TTL, and a token first verified (so cached) at t≈0.4
    settings.JWKS_CACHE_TTL = 0.6
    settings.JWKS_MIN_REFRESH_INTERVAL = 0.05
    key_set.cache_clear()
    first = {"Authorization": f"Bearer {sign_token(access_claims(sub='1'), signing_key)}"}
    late = {"Authorization": f"Bearer {sign_token(access_claims(sub='2'), signing_key)}"}
    assert client.get("/api/v1/orders/", headers=first).status_code == 200
    time.sleep(0.4)
    assert client.get("/api/v1/orders/", headers=late).status_code == 200

    # when the key is retired just after, and the key set fetched at t=0 has lapsed (t≈0.7)
    monkeypatch.setattr(users, "jwks", {"keys": [public_jwk(Ed25519PrivateKey.generate().public_key())]})
    time.sleep(0.3)
    response = client.get("/api/v1/orders/", headers=late)

    # then the late token goes with its key set, not a full TTL after it was verified (t≈1.0)
    assert response.status_code == 401
    assert json_of(response)["error"]["code"] == "unknown_key"
    assert users.jwks_fetches == 2
