"""Real upstreams for the gateway's tests: one small HTTP server per service on 127.0.0.1 (see
upstream_stub.py). The user service's stub publishes the JWKS of a test signing key, so the gateway
verifies tokens exactly as in production."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.tokens import public_jwk, sign_token
from proxy import auth, balancer, breakers, connections, fallback, retries, upstream, views
from proxy.tests.upstream_stub import JWKS_PATH, StubUpstream
from proxy.tests.utils import access_claims


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def stubs(signing_key: Ed25519PrivateKey) -> Iterator[dict[str, StubUpstream]]:
    servers = {name: StubUpstream(name) for name in ("users", "orders", "payments")}
    servers["users"].jwks = {"keys": [public_jwk(signing_key.public_key())]}
    yield servers
    for server in servers.values():
        server.stop()


def _reset_clients() -> None:
    balancer.reset()
    breakers.reset()
    retries.reset()
    fallback.reset()
    auth.key_set.cache_clear()
    auth.verified_tokens.clear()
    if upstream.pool_manager.cache_info().currsize:
        upstream.pool_manager().clear()
    upstream.pool_manager.cache_clear()
    connections.close_all()
    views.health_document.clear()  # each test's first /health is checked afresh


@pytest.fixture(autouse=True)
def gateway_settings(settings: Any, stubs: dict[str, StubUpstream]) -> Iterator[Any]:
    """Point the gateway at the stubs, with fresh key set and connection pools for every test."""
    for stub in stubs.values():
        stub.reset()
    settings.UPSTREAMS = {name: stub.url for name, stub in stubs.items()}
    settings.JWKS_URL = f"{stubs['users'].url}{JWKS_PATH}"
    settings.UPSTREAM_READ_TIMEOUT = 2.0
    settings.HEALTH_CHECK_TIMEOUT = 1.0
    settings.BREAKER_REDIS_PREFIX = f"test-breaker-{uuid.uuid4().hex}"  # real mode: no state from other tests
    settings.RATE_LIMIT_KEY_PREFIX = f"test-{uuid.uuid4().hex}"  # every test starts with full rate-limit quotas
    settings.CONFIG_POLL_INTERVAL = 0  # the config center is off: the settings above apply (configcenter/tests)
    _reset_clients()
    yield settings
    _reset_clients()


@pytest.fixture
def users(stubs: dict[str, StubUpstream]) -> StubUpstream:
    return stubs["users"]


@pytest.fixture
def orders(stubs: dict[str, StubUpstream]) -> StubUpstream:
    return stubs["orders"]


@pytest.fixture
def payments(stubs: dict[str, StubUpstream]) -> StubUpstream:
    return stubs["payments"]


@pytest.fixture
def make_token(signing_key: Ed25519PrivateKey) -> Callable[..., str]:
    def make(**overrides: Any) -> str:
        return sign_token(access_claims(**overrides), signing_key)

    return make


@pytest.fixture
def bearer(make_token: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token()}"}
