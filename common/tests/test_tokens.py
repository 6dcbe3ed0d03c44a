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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common.tokens import JwksKeySet, TokenError, parse_jwks, public_jwk, sign_token, verify_token
from tests.loopback import LoopbackServer, Received, Reply

# RFC 8037, appendix A.1 (the key) and A.3 (its RFC 7638 thumbprint).
RFC8037_PRIVATE_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_PUBLIC_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"

ISSUER, AUDIENCE = "shop-users", "shop-api"
JWKS_PATH = "/.well-known/jwks.json"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def rfc8037_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_PRIVATE_D))


def access_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {"iss": ISSUER, "aud": AUDIENCE, "sub": "7", "iat": now, "exp": now + 600, "typ": "access"}
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token with exactly this header, which PyJWT's encoder would not always agree to write."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def kid(key: Ed25519PrivateKey) -> str:
    return public_jwk(key.public_key())["kid"]


@pytest.fixture(scope="module")
def keys(key: Ed25519PrivateKey, kid: str) -> dict[str, Ed25519PublicKey]:
    return {kid: key.public_key()}


def verify(token: str, keys: dict[str, Ed25519PublicKey], kind: str = "access") -> dict[str, Any]:
    return verify_token(token, key_for_kid=keys.get, issuer=ISSUER, audience=AUDIENCE, token_type=kind)


def test_public_jwk_of_the_rfc8037_key_has_the_rfc_thumbprint_as_kid() -> None:
    jwk = public_jwk(rfc8037_key().public_key())

    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": RFC8037_PUBLIC_X,
        "kid": RFC8037_THUMBPRINT,
        "use": "sig",
        "alg": "EdDSA",
    }


def test_public_jwk_kid_is_the_sha256_of_the_canonical_required_members(key: Ed25519PrivateKey) -> None:
    x = b64url(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'  # RFC 7638 section 3: sorted, no whitespace

    assert public_jwk(key.public_key())["kid"] == b64url(hashlib.sha256(canonical.encode()).digest())


def test_signed_token_verifies_and_names_its_key(key: Ed25519PrivateKey, kid: str, keys: dict[str, Any]) -> None:
    claims = access_claims(jti="a-token-id")
    token = sign_token(claims, key)

    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": kid, "typ": "JWT"}
    assert verify(token, keys) == claims


def test_signed_refresh_token_verifies_as_refresh_only(key: Ed25519PrivateKey, keys: dict[str, Any]) -> None:
    token = sign_token(access_claims(typ="refresh"), key)

    assert verify(token, keys, kind="refresh")["typ"] == "refresh"
    with pytest.raises(TokenError) as raised:
        verify(token, keys)
    assert raised.value.code == "wrong_token_type"


def test_token_expired_within_the_leeway_is_still_accepted(key: Ed25519PrivateKey, keys: dict[str, Any]) -> None:
    now = int(time.time())

    assert verify(sign_token(access_claims(iat=now - 600, exp=now - 2), key), keys)["sub"] == "7"


def rejection(token: str, keys: dict[str, Ed25519PublicKey]) -> str:
    with pytest.raises(TokenError) as raised:
        verify(token, keys)
    assert raised.value.status_code == 401
    return raised.value.code


def test_alg_none_is_rejected(kid: str, keys: dict[str, Any]) -> None:
    token = forge({"alg": "none", "kid": kid, "typ": "JWT"}, access_claims(), lambda _: b"")

    assert rejection(token, keys) == "invalid_algorithm"


@pytest.mark.parametrize(
    "secret",
    [
        lambda public: public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        lambda public: public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        lambda public: b64url(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).encode(),
    ],
    ids=["raw", "pem", "jwk-x"],
)
def test_hs256_signed_with_the_public_key_is_rejected(
    key: Ed25519PrivateKey, kid: str, keys: dict[str, Any], secret: Callable[[Ed25519PublicKey], bytes]
) -> None:
    # The classic key confusion: the public key is public, so anyone could sign with it as an HMAC secret.
    mac_key = secret(key.public_key())
    token = forge(
        {"alg": "HS256", "kid": kid, "typ": "JWT"},
        access_claims(),
        lambda data: hmac.new(mac_key, data, hashlib.sha256).digest(),
    )

    assert rejection(token, keys) == "invalid_algorithm"


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"iss": "someone-else"}, "invalid_issuer"),
        ({"aud": "another-api"}, "invalid_audience"),
        ({"iat": int(time.time()) - 1200, "exp": int(time.time()) - 60}, "token_expired"),
        ({"exp": None}, "missing_claim"),
        ({"iat": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"sub": "admin"}, "invalid_token"),
        ({"sub": "-7"}, "invalid_token"),
        ({"sub": "²"}, "invalid_token"),
        ({"typ": "refresh"}, "wrong_token_type"),
        ({"typ": None}, "wrong_token_type"),
    ],
)
def test_tokens_with_bad_claims_are_rejected(
    key: Ed25519PrivateKey, keys: dict[str, Any], overrides: dict[str, Any], code: str
) -> None:
    assert rejection(sign_token(access_claims(**overrides), key), keys) == code


@pytest.mark.parametrize("param", ["jku", "x5u", "jwk", "x5c"])
def test_tokens_pointing_at_external_keys_are_rejected_even_when_validly_signed(
    key: Ed25519PrivateKey, kid: str, keys: dict[str, Any], param: str
) -> None:
    value: Any = {"jku": "https://evil.example/jwks.json", "x5u": "https://evil.example/cert.pem"}.get(param)
    if param == "jwk":
        value = public_jwk(key.public_key())
    if param == "x5c":
        value = ["MIIB..."]
    token = jwt.encode(access_claims(), key, algorithm="EdDSA", headers={"kid": kid, param: value})

    assert rejection(token, keys) == "forbidden_header"


def test_token_signed_by_an_unknown_key_is_rejected(keys: dict[str, Any]) -> None:
    token = sign_token(access_claims(), Ed25519PrivateKey.generate())

    assert rejection(token, keys) == "unknown_key"


def test_token_without_a_kid_is_rejected(key: Ed25519PrivateKey, keys: dict[str, Any]) -> None:
    token = forge({"alg": "EdDSA", "typ": "JWT"}, access_claims(), key.sign)

    assert rejection(token, keys) == "unknown_key"


@pytest.mark.parametrize("kid_value", [42, ["a"], {"kid": "a"}])
def test_token_with_a_kid_that_is_not_a_string_is_rejected_as_malformed(
    key: Ed25519PrivateKey, keys: dict[str, Any], kid_value: Any
) -> None:
    token = forge({"alg": "EdDSA", "typ": "JWT", "kid": kid_value}, access_claims(), key.sign)

    assert rejection(token, keys) == "malformed_token"


def test_token_signed_by_another_key_under_a_known_kid_is_rejected(kid: str, keys: dict[str, Any]) -> None:
    token = forge({"alg": "EdDSA", "kid": kid, "typ": "JWT"}, access_claims(), Ed25519PrivateKey.generate().sign)

    assert rejection(token, keys) == "invalid_signature"


@pytest.mark.parametrize(
    "token", ["", "not-a-token", "a.b", "a.b.c", "!!!.???.***", f"{b64url(b'[1]')}.e30.", f"{b64url(b'{')}.e30."]
)
def test_malformed_tokens_are_rejected_as_malformed(keys: dict[str, Any], token: str) -> None:
    assert rejection(token, keys) == "malformed_token"


def test_token_without_an_algorithm_is_rejected(keys: dict[str, Any]) -> None:
    assert rejection("e30.e30.e30", keys) == "invalid_algorithm"  # header {}


# The published key set


def jwks_of(*private_keys: Ed25519PrivateKey) -> dict[str, Any]:
    return {"keys": [public_jwk(k.public_key()) for k in private_keys]}


def serve_jwks(server: LoopbackServer, document: Callable[[], Any]) -> None:
    def respond(received: Received) -> Reply:
        return Reply(body=document()) if received.path == JWKS_PATH else Reply(404)

    server.respond = respond


def fetches(server: LoopbackServer) -> int:
    return len(server.requests_to(JWKS_PATH))


def test_key_set_fetches_once_and_caches(server: LoopbackServer, key: Ed25519PrivateKey, kid: str) -> None:
    serve_jwks(server, lambda: jwks_of(key))
    key_set = JwksKeySet(server.url + JWKS_PATH)

    found = [key_set(kid) for _ in range(5)]

    assert all(k is not None and public_jwk(k)["kid"] == kid for k in found)
    assert fetches(server) == 1


def test_key_set_refetches_for_an_unknown_kid_at_most_once_per_interval(
    server: LoopbackServer, key: Ed25519PrivateKey, kid: str
) -> None:
    serve_jwks(server, lambda: jwks_of(key))
    key_set = JwksKeySet(server.url + JWKS_PATH, min_refresh_interval=0.5)
    assert key_set(kid) is not None

    # A flood of made-up kids right after the fetch costs nothing more.
    assert all(key_set(f"made-up-{n}") is None for n in range(20))
    assert fetches(server) == 1

    time.sleep(0.55)
    assert all(key_set(f"made-up-again-{n}") is None for n in range(20))
    assert fetches(server) == 2  # one more fetch for the whole flood


def test_key_set_accepts_a_newly_published_key_after_the_interval(
    server: LoopbackServer, key: Ed25519PrivateKey, kid: str
) -> None:
    published = [key]
    serve_jwks(server, lambda: jwks_of(*published))
    key_set = JwksKeySet(server.url + JWKS_PATH, min_refresh_interval=0.2)
    assert key_set(kid) is not None

    # Given the user service rotates in a new key
    new_key = Ed25519PrivateKey.generate()
    new_kid = public_jwk(new_key.public_key())["kid"]
    published.append(new_key)

    # Then it is found once the interval has passed, by the same key set, and the old one still is
    time.sleep(0.25)
    token = sign_token(access_claims(), new_key)
    claims = verify_token(token, key_for_kid=key_set, issuer=ISSUER, audience=AUDIENCE, token_type="access")
    assert claims["sub"] == "7"
    assert key_set(new_kid) is not None
    assert key_set(kid) is not None
    assert fetches(server) == 2


@pytest.mark.parametrize(
    "failure",
    [
        Reply(503, {"error": "down"}),
        Reply(200, "not a key set"),
        Reply(200, {"keys": "all of them"}),
        Reply(200, {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "short", "x": "AAAA"}]}),
    ],
    ids=["http-error", "not-an-object", "keys-not-a-list", "bad-x"],
)
def test_key_set_keeps_its_keys_when_a_refresh_fails(
    server: LoopbackServer, key: Ed25519PrivateKey, kid: str, failure: Reply
) -> None:
    # Given a key set whose cache has expired
    server.answer(Reply(body=jwks_of(key)), failure)
    key_set = JwksKeySet(server.url + JWKS_PATH, ttl=0.1, min_refresh_interval=0.1)
    assert key_set(kid) is not None
    time.sleep(0.15)

    # When the refresh fails, the key it had is still used
    assert key_set(kid) is not None
    assert fetches(server) == 2


def test_key_set_keeps_its_keys_when_the_server_is_gone(key: Ed25519PrivateKey, kid: str) -> None:
    with_server = LoopbackServer()
    with_server.start()
    serve_jwks(with_server, lambda: jwks_of(key))
    key_set = JwksKeySet(with_server.url + JWKS_PATH, ttl=0.1, min_refresh_interval=0.1, timeout=0.5)
    assert key_set(kid) is not None
    with_server.stop()
    time.sleep(0.15)

    assert key_set(kid) is not None


def test_key_set_ignores_proxy_settings(
    server: LoopbackServer, key: Ed25519PrivateKey, kid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    serve_jwks(server, lambda: jwks_of(key))

    assert JwksKeySet(server.url + JWKS_PATH)(kid) is not None


def test_parse_jwks_keeps_only_ed25519_keys_with_a_kid(key: Ed25519PrivateKey, kid: str) -> None:
    document = {
        "keys": [
            {"kty": "RSA", "kid": "rsa", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "f83O", "y": "x_FE"},
            {"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": RFC8037_PUBLIC_X},
            {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_PUBLIC_X},  # no kid
            {"kty": "OKP", "crv": "Ed25519", "kid": "no-x"},
            "not a key",
            public_jwk(key.public_key()),
        ]
    }

    keys = parse_jwks(document)

    assert list(keys) == [kid]
    assert keys[kid].public_bytes(Encoding.Raw, PublicFormat.Raw) == key.public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )


@pytest.mark.parametrize("document", [[], "keys", None, {"keys": "all of them"}])
def test_parse_jwks_refuses_what_is_not_a_key_set(document: Any) -> None:
    with pytest.raises(ValueError, match="not a JWK set"):
        parse_jwks(document)
