"""Attacks on authentication, against the running system: forged and doctored access tokens at the gateway,
token-content-driven fetches, stolen refresh tokens, password guessing, and signing-key rotation."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from conftest import PASSWORD, Client, sign_up
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

import manage_all

ISSUER, AUDIENCE = "shop-users", "shop-api"
USERS = next(service for service in manage_all.SERVICES if service.name == "users")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def kid_of(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": b64(raw)}, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(canonical.encode()).digest())


@pytest.fixture(scope="module")
def user_key(system: manage_all.System) -> Ed25519PrivateKey:
    """The user service's configured signing key: the attacker who holds it is out of scope, but tokens
    signed with it make each check below the only thing standing between the token and the API."""
    pem = (
        system.base_env.get("JWT_PRIVATE_KEY") or (system.var_dir / "secrets" / "users" / "jwt_private_key").read_text()
    )
    key = load_pem_private_key(pem.replace("\\n", "\n").encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


@pytest.fixture(scope="module")
def account(gateway: str) -> dict[str, Any]:
    return sign_up(gateway)[1]


def claims(account: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(account["id"]),
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        "typ": "access",
        "staff": False,
    }
    return {name: value for name, value in {**base, **overrides}.items() if value is not None}


def signed(key: Ed25519PrivateKey, payload: dict[str, Any], **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": kid_of(key), **headers})


def unsigned(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def attack_tokens(key: Ed25519PrivateKey, account: dict[str, Any]) -> dict[str, tuple[str, str]]:
    kid = kid_of(key)
    now = int(time.time())
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    genuine = signed(key, claims(account))
    header, payload, signature = genuine.split(".")
    as_staff = b64(json.dumps(claims(account, staff=True)).encode())
    flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
    flipped[-1] ^= 1
    return {
        "alg none": (unsigned({"alg": "none", "kid": kid}, claims(account), lambda _: b""), "invalid_algorithm"),
        "HS256 signed with the public key": (
            unsigned(
                {"alg": "HS256", "kid": kid}, claims(account), lambda data: hmac.new(public, data, "sha256").digest()
            ),
            "invalid_algorithm",
        ),
        "expired": (
            signed(key, claims(account, iat=now - 900, exp=now - 60)),
            "token_expired",
        ),
        "missing exp": (signed(key, claims(account, exp=None)), "missing_claim"),
        "wrong aud": (signed(key, claims(account, aud="another-api")), "invalid_audience"),
        "wrong iss": (signed(key, claims(account, iss="someone-else")), "invalid_issuer"),
        "unknown kid": (signed(Ed25519PrivateKey.generate(), claims(account)), "unknown_key"),
        "made-up kid": (signed(key, claims(account), kid="no-such-key"), "unknown_key"),
        "tampered payload": (f"{header}.{as_staff}.{signature}", "invalid_signature"),
        "tampered signature": (f"{header}.{payload}.{b64(bytes(flipped))}", "invalid_signature"),
        "header not JSON": (f"{b64(b'{not json')}.{payload}.{signature}", "malformed_token"),
        "header a list": (f"{b64(b'[1, 2]')}.{payload}.{signature}", "malformed_token"),
        "kid a number": (unsigned({"alg": "EdDSA", "kid": 7}, claims(account), key.sign), "malformed_token"),
        "two parts": (f"{header}.{payload}", "malformed_token"),
        "refresh-typed": (signed(key, claims(account, typ="refresh")), "wrong_token_type"),
    }


def test_the_genuine_token_of_the_attacks_is_accepted(
    gateway: str, user_key: Ed25519PrivateKey, account: dict[str, Any]
) -> None:
    # the control: every attack below differs from this token in one respect only
    response = Client(gateway, token=signed(user_key, claims(account))).get("/api/v1/users/me/")

    assert response.status_code == 200
    assert response.json()["id"] == account["id"]


@pytest.mark.parametrize("path", ["/api/v1/orders/", "/api/v1/users/me/"], ids=["auth-required", "auth-optional"])
def test_every_forged_or_doctored_token_is_refused_with_a_clear_code(
    gateway: str, user_key: Ed25519PrivateKey, account: dict[str, Any], path: str
) -> None:
    outcomes = {}
    for case, (token, _) in attack_tokens(user_key, account).items():
        response = Client(gateway, token=token).get(path)
        outcomes[case] = (response.status_code, response.json()["error"]["code"], response.headers["WWW-Authenticate"])

    expected = {case: code for case, (_, code) in attack_tokens(user_key, account).items()}
    assert {case: code for case, (_, code, _) in outcomes.items()} == expected
    assert {status for status, _, _ in outcomes.values()} == {401}
    assert all(challenge.startswith("Bearer") for _, _, challenge in outcomes.values())


class ConnectionRecorder:
    """A listening socket on loopback that records every connection made to it (and answers none)."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = self.socket.accept()
                self.connections += 1
                connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.socket.close()


@pytest.fixture
def recorder() -> Iterator[ConnectionRecorder]:
    server = ConnectionRecorder()
    yield server
    server.close()


def test_no_request_is_ever_made_because_of_a_tokens_content(
    gateway: str, user_key: Ed25519PrivateKey, account: dict[str, Any], recorder: ConnectionRecorder
) -> None:
    # given tokens whose headers point at a server we watch, with known and with unknown kids
    stranger = Ed25519PrivateKey.generate()
    tokens = [
        signed(key, claims(account), **{param: f"{recorder.url}/{param}"})
        for key in (user_key, stranger)
        for param in ("jku", "x5u")
    ]
    tokens.append(signed(stranger, claims(account, iss=recorder.url)))  # an issuer that looks like a URL
    tokens.append(signed(stranger, claims(account), kid=f"{recorder.url}/jwks.json"))  # a kid that does too

    # when each is presented
    codes = [Client(gateway, token=token).get("/api/v1/orders/").json()["error"]["code"] for token in tokens]
    time.sleep(0.5)

    # then each is refused, and nobody connected to the server they name
    assert codes[:4] == ["forbidden_header"] * 4
    assert codes[4:] == ["unknown_key", "unknown_key"]
    assert recorder.connections == 0


# --- Refresh tokens and sign-out -------------------------------------------------------------------------


def test_a_stolen_refresh_token_used_after_the_owner_refreshed_ends_the_session(gateway: str) -> None:
    # given Ann's sign-in, and a thief holding a copy of her refresh token
    client, account = sign_up(gateway)
    stolen = account["refresh"]
    owners = client.post("/api/v1/auth/refresh", json={"refresh": stolen}).json()
    assert owners["refresh"] != stolen

    # when the thief tries it
    thief = client.post("/api/v1/auth/refresh", json={"refresh": stolen})

    # then the thief is refused and Ann's session is revoked with it
    assert thief.status_code == 401
    assert thief.json()["error"]["code"] == "token_reused"
    again = client.post("/api/v1/auth/refresh", json={"refresh": owners["refresh"]})
    assert again.json()["error"]["code"] == "token_revoked"


def test_of_concurrent_refreshes_with_one_token_at_most_one_succeeds(gateway: str) -> None:
    _, account = sign_up(gateway)
    start = threading.Barrier(4)
    statuses: list[int] = []

    def refresh() -> None:
        start.wait()
        statuses.append(Client(gateway).post("/api/v1/auth/refresh", json={"refresh": account["refresh"]}).status_code)

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(statuses) == 4
    assert statuses.count(200) <= 1
    assert set(statuses) <= {200, 401}


def test_logout_revokes_the_refresh_token(gateway: str) -> None:
    client, account = sign_up(gateway)

    response = client.post("/api/v1/auth/logout", json={"refresh": account["refresh"]})

    assert response.status_code == 204
    refused = client.post("/api/v1/auth/refresh", json={"refresh": account["refresh"]})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "token_revoked"


def test_password_guessing_locks_the_account_for_a_while_with_retry_after(gateway: str) -> None:
    _, account = sign_up(gateway)
    guesser = Client(gateway)
    for attempt in range(5):
        wrong = guesser.post("/api/v1/auth/token", json={"email": account["email"], "password": f"guess {attempt}"})
        assert wrong.status_code == 401

    locked = guesser.post("/api/v1/auth/token", json={"email": account["email"], "password": PASSWORD})

    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "too_many_attempts"
    assert 0 < int(locked.headers["Retry-After"]) <= 300
    assert locked.headers["X-Request-ID"]


# --- Signing-key rotation --------------------------------------------------------------------------------


def signing_keys(system: manage_all.System, *args: str) -> str:
    result = subprocess.run(
        system.manage_command("signing_keys", *args),
        cwd=USERS.directory,
        env=system.env_for(USERS),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def sign_in(gateway: str, email: str) -> str:
    response = Client(gateway).post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return str(response.json()["access"])


def test_a_rotated_in_key_is_accepted_and_a_retired_one_refused_without_a_restart(
    gateway: str, system: manage_all.System
) -> None:
    ttl = 2.0  # the system runs with JWKS_CACHE_TTL=2 and JWKS_MIN_REFRESH_INTERVAL=1 (see conftest.py)
    _, account = sign_up(gateway)

    # given a key rotated in: published at once, signing after a delay longer than the refresh interval
    second = signing_keys(system, "rotate", "--activate-in", "1.5")
    time.sleep(1.6)
    token = sign_in(gateway, account["email"])
    assert jwt.get_unverified_header(token)["kid"] == second

    # then the gateway accepts its tokens
    assert Client(gateway, token=token).get("/api/v1/users/me/").status_code == 200

    # given the next rotation, after which the second key only verifies
    third = signing_keys(system, "rotate", "--activate-in", "1.5")
    time.sleep(1.6)
    assert jwt.get_unverified_header(sign_in(gateway, account["email"]))["kid"] == third
    assert Client(gateway, token=token).get("/api/v1/users/me/").status_code == 200

    # when the second key is retired
    signing_keys(system, "retire", "--", second)  # a kid (base64url) may start with "-"
    assert second not in [
        jwk["kid"] for jwk in Client(system.url("users")).get("/.well-known/jwks.json").json()["keys"]
    ]
    time.sleep(ttl + 0.5)

    # then its tokens are refused once the gateway's key cache has lapsed, the current key's still work
    refused = Client(gateway, token=token).get("/api/v1/users/me/")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unknown_key"
    assert Client(gateway, token=sign_in(gateway, account["email"])).get("/api/v1/users/me/").status_code == 200
    statuses = {line.split()[0]: line.split()[1] for line in signing_keys(system, "list").splitlines()}
    assert statuses[second] == "retired"
    assert statuses[third] == "current"
