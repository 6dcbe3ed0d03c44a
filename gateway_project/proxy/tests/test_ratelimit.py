"""Rate limits: the policies and headers through the real view (Django's test client against the stub
services), the store failing, and exactness under a burst against a real gunicorn gateway with several
worker processes, counting in SQLite (embedded mode) and in Redis (real mode)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from limits.errors import StorageError
from limits.storage import RedisStorage

from proxy.client_address import rate_limit_identity
from proxy.ratelimit_storage import RedisCounterStorage, SQLiteStorage
from proxy.routes import RATE_LIMIT_POLICIES, ROUTES
from proxy.tests.test_gunicorn import PROJECT_DIR, Gateway
from proxy.tests.upstream_stub import JWKS_PATH, StubUpstream
from proxy.tests.utils import RawServer, json_of
from proxy.views import health_document

POLICY = re.compile(r'^"(?P<name>[a-z]+)";q=(?P<q>\d+);w=(?P<w>\d+)$')
STANDING = re.compile(r'^"(?P<name>[a-z]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


def rate_limit_headers(headers: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The parsed RateLimit-Policy and RateLimit headers; fails the test when either is missing or malformed."""
    policy = POLICY.match(headers["RateLimit-Policy"])
    standing = STANDING.match(headers["RateLimit"])
    assert policy, headers["RateLimit-Policy"]
    assert standing, headers["RateLimit"]
    assert policy["name"] == standing["name"]
    return policy.groupdict(), standing.groupdict()


def redis_url_on_a_closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture(autouse=True)
def clock_standing_still(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows end on the clock: a test's few requests straddling a minute's end would be counted in two
    windows and the test fail by chance. In this process the windows' clock stands still; the gateways
    these tests start in processes of their own count per day where they count exactly."""
    from proxy import ratelimit

    now = time.time()
    monkeypatch.setattr(ratelimit, "wall_clock", lambda: now)


# The route table


def test_every_route_names_a_known_policy() -> None:
    assert {route.rate_limit for route in ROUTES} <= {*RATE_LIMIT_POLICIES, None}


def test_sign_in_has_its_own_policy_keyed_by_address_that_fails_closed() -> None:
    login = next(route for route in ROUTES if "/api/v1/auth/token".startswith(route.prefix))
    refresh = next(route for route in ROUTES if "/api/v1/auth/refresh".startswith(route.prefix))

    assert login.rate_limit == "login"
    assert RATE_LIMIT_POLICIES["login"].key == "address"
    assert RATE_LIMIT_POLICIES["login"].on_store_failure == "closed"
    assert refresh.rate_limit == "default"
    assert RATE_LIMIT_POLICIES["default"].on_store_failure == "open"


# Headers and the 429


def test_a_success_carries_the_policy_and_the_remaining_quota(client: Client, settings: Any) -> None:
    settings.RATE_LIMIT_DEFAULT = "5/minute"

    first = client.get("/api/v1/products/")
    second = client.get("/api/v1/products/")

    assert first.status_code == second.status_code == 200
    policy, standing = rate_limit_headers(first)
    assert policy == {"name": "default", "q": "5", "w": "60"}
    assert standing["r"] == "4"
    assert 1 <= int(standing["t"]) <= 60
    assert rate_limit_headers(second)[1]["r"] == "3"
    assert "Retry-After" not in first


@pytest.mark.parametrize(
    ("request_kwargs", "status"),
    [
        ({"path": "/api/v1/orders/"}, 401),  # no token on a route that needs one
        ({"path": "/api/v1/orders/", "headers": {"Authorization": "Bearer not-a-jwt"}}, 401),
        ({"path": "/api/v1/payments/", "method": "post"}, 405),
        ({"path": "/api/v1/users/boom/"}, 500),  # the service's own error
        ({"path": "/api/v1/products/", "headers": {"Host": "evil.example"}}, 400),  # not in ALLOWED_HOSTS
    ],
    ids=["missing-token", "bad-token", "wrong-method", "service-error", "bad-host"],
)
def test_errors_carry_the_headers_and_count_against_the_address(
    client: Client, users: StubUpstream, settings: Any, request_kwargs: dict[str, Any], status: int
) -> None:
    # given
    settings.RATE_LIMIT_DEFAULT = "5/minute"
    users.reply("/api/v1/users/boom/", status=500, body=b"{}")
    method = request_kwargs.pop("method", "get")

    # when
    response = getattr(client, method)(**request_kwargs)
    then_anonymous = client.get("/api/v1/products/")

    # then
    assert response.status_code == status
    policy, standing = rate_limit_headers(response)
    assert policy["name"] == "default"
    assert standing["r"] == "4"
    assert rate_limit_headers(then_anonymous)[1]["r"] == "3"


def test_the_request_over_the_limit_is_429_with_retry_after_and_reaches_no_service(
    client: Client, orders: StubUpstream, settings: Any
) -> None:
    # given
    settings.RATE_LIMIT_DEFAULT = "3/minute"
    for _ in range(3):
        assert client.get("/api/v1/products/").status_code == 200

    # when
    response = client.get("/api/v1/products/")

    # then
    assert response.status_code == 429
    error = json_of(response)["error"]
    assert error["code"] == "rate_limited"
    assert error["details"]["policy"] == "default"
    _, standing = rate_limit_headers(response)
    assert standing["r"] == "0"
    assert response["Retry-After"] == standing["t"]
    assert 1 <= int(response["Retry-After"]) <= 60
    assert error["details"]["retry_after"] == int(response["Retry-After"])
    assert response["X-Request-ID"]
    assert len(orders.received) == 3


def test_a_service_own_429_keeps_its_retry_after(client: Client, users: StubUpstream) -> None:
    users.reply("/api/v1/auth/token", status=429, body=b"{}", headers=[("Retry-After", "1234")])

    response = client.post("/api/v1/auth/token", {}, content_type="application/json")

    assert response.status_code == 429
    assert response["Retry-After"] == "1234"
    assert rate_limit_headers(response)[0]["name"] == "login"


# Who is counted


def test_a_signed_in_user_is_counted_apart_from_other_users_and_their_address(
    client: Client, make_token: Callable[..., str], settings: Any
) -> None:
    # given user 7 spent their quota
    settings.RATE_LIMIT_DEFAULT = "2/minute"
    user_7 = {"Authorization": f"Bearer {make_token(sub='7')}"}
    for _ in range(2):
        assert client.get("/api/v1/orders/", headers=user_7).status_code == 200

    # when / then
    assert client.get("/api/v1/orders/", headers=user_7).status_code == 429
    user_8 = client.get("/api/v1/orders/", headers={"Authorization": f"Bearer {make_token(sub='8')}"})
    assert user_8.status_code == 200
    assert rate_limit_headers(user_8)[1]["r"] == "1"
    anonymous = client.get("/api/v1/products/")  # the same address, signed out
    assert anonymous.status_code == 200
    assert rate_limit_headers(anonymous)[1]["r"] == "1"


def test_anonymous_clients_are_counted_per_address(client: Client, settings: Any) -> None:
    settings.RATE_LIMIT_DEFAULT = "1/minute"

    assert client.get("/api/v1/products/", REMOTE_ADDR="192.0.2.1").status_code == 200
    assert client.get("/api/v1/products/", REMOTE_ADDR="192.0.2.1").status_code == 429
    assert client.get("/api/v1/products/", REMOTE_ADDR="192.0.2.2").status_code == 200


def test_ipv6_clients_are_counted_per_64_network(client: Client, settings: Any) -> None:
    settings.RATE_LIMIT_DEFAULT = "1/minute"

    assert client.get("/api/v1/products/", REMOTE_ADDR="2001:db8:1:2::1").status_code == 200
    assert client.get("/api/v1/products/", REMOTE_ADDR="2001:db8:1:2:ffff::9").status_code == 429
    assert client.get("/api/v1/products/", REMOTE_ADDR="2001:db8:1:3::1").status_code == 200


@pytest.mark.parametrize(
    ("address", "identity"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("", ""),
    ],
)
def test_the_identity_of_an_address(address: str, identity: str) -> None:
    assert rate_limit_identity(address) == identity


def test_sign_in_is_counted_per_address_whoever_the_token_names(
    client: Client, users: StubUpstream, make_token: Callable[..., str], settings: Any
) -> None:
    settings.RATE_LIMIT_LOGIN = "2/minute"
    attempts = [
        client.post(
            "/api/v1/auth/token",
            {"email": "a@example.com", "password": "guess"},
            content_type="application/json",
            headers={"Authorization": f"Bearer {make_token(sub=str(user))}"},
        )
        for user in (7, 8, 9)
    ]

    assert [response.status_code for response in attempts] == [200, 200, 429]
    assert rate_limit_headers(attempts[0])[0] == {"name": "login", "q": "2", "w": "60"}
    assert len(users.received) == 2
    # the other routes have their own quota
    assert client.post("/api/v1/auth/refresh", {}, content_type="application/json").status_code == 200


def test_a_spoofed_x_forwarded_for_does_not_buy_a_fresh_quota(
    client: Client, orders: StubUpstream, settings: Any
) -> None:
    # given no trusted proxy in front (the default) and a client that spent its quota
    settings.RATE_LIMIT_DEFAULT = "2/minute"
    for hop in ("198.51.100.1", "198.51.100.2"):
        assert client.get("/api/v1/products/", headers={"X-Forwarded-For": hop}).status_code == 200

    # when it claims yet another address
    response = client.get("/api/v1/products/", headers={"X-Forwarded-For": "198.51.100.3"})

    # then
    assert response.status_code == 429
    assert [received.headers["X-Forwarded-For"] for received in orders.received] == ["127.0.0.1", "127.0.0.1"]


def test_behind_one_trusted_proxy_the_right_most_hop_is_the_client(
    client: Client, orders: StubUpstream, settings: Any
) -> None:
    # given a reverse proxy at 10.0.0.2 that appends the address it was called from
    settings.TRUSTED_PROXY_COUNT = 1
    settings.RATE_LIMIT_DEFAULT = "1/minute"

    def through_the_proxy(forwarded_for: str) -> int:
        response = client.get("/api/v1/products/", REMOTE_ADDR="10.0.0.2", headers={"X-Forwarded-For": forwarded_for})
        return response.status_code

    # when / then
    assert through_the_proxy("203.0.113.5") == 200
    assert through_the_proxy("6.6.6.6, 203.0.113.5") == 429  # a spoofed left part changes nothing
    assert through_the_proxy("203.0.113.5, 203.0.113.9") == 200  # another client
    assert [received.headers["X-Forwarded-For"] for received in orders.received] == ["203.0.113.5", "203.0.113.9"]


def test_behind_a_trusted_proxy_a_request_without_its_hop_is_counted_by_its_socket(
    client: Client, orders: StubUpstream, settings: Any
) -> None:
    settings.TRUSTED_PROXY_COUNT = 2
    settings.RATE_LIMIT_DEFAULT = "1/minute"

    assert (
        client.get("/api/v1/products/", REMOTE_ADDR="10.0.0.2", headers={"X-Forwarded-For": "1.2.3.4"}).status_code
        == 200
    )
    assert (
        client.get("/api/v1/products/", REMOTE_ADDR="10.0.0.2", headers={"X-Forwarded-For": "5.6.7.8"}).status_code
        == 429
    )
    garbage = client.get("/api/v1/products/", REMOTE_ADDR="10.0.0.3", headers={"X-Forwarded-For": "evil, x, 10.0.0.9"})
    assert garbage.status_code == 200
    assert [received.headers["X-Forwarded-For"] for received in orders.received] == ["10.0.0.2", "10.0.0.3"]


# The store failing


def test_with_redis_unreachable_fail_open_routes_serve_with_a_per_process_limit(
    client: Client, orders: StubUpstream, settings: Any
) -> None:
    # given
    settings.RATE_LIMIT_REDIS_URL = redis_url_on_a_closed_port()
    settings.RATE_LIMIT_DEFAULT = "3/minute"

    # when
    started = time.monotonic()
    statuses = [client.get("/api/v1/products/").status_code for _ in range(4)]

    # then
    assert statuses == [200, 200, 200, 429]
    assert time.monotonic() - started < 2
    assert len(orders.received) == 3


def test_with_redis_unreachable_sign_in_fails_closed_with_503(
    client: Client, users: StubUpstream, settings: Any
) -> None:
    settings.RATE_LIMIT_REDIS_URL = redis_url_on_a_closed_port()

    response = client.post("/api/v1/auth/token", {}, content_type="application/json")

    assert response.status_code == 503
    assert json_of(response)["error"]["code"] == "rate_limit_unavailable"
    assert 1 <= int(response["Retry-After"]) <= settings.RATE_LIMIT_STORE_RETRY_AFTER
    policy, standing = rate_limit_headers(response)
    assert policy["name"] == "login"
    assert standing["r"] == "0"
    assert users.received == []


@pytest.mark.django_db
def test_health_reports_the_rate_limit_store(client: Client, settings: Any) -> None:
    settings.RATE_LIMIT_REDIS_URL = ""  # embedded mode, whichever mode this run is in
    healthy = json_of(client.get("/health"))
    settings.RATE_LIMIT_REDIS_URL = redis_url_on_a_closed_port()
    health_document.clear()  # not this worker's document of the last second

    response = client.get("/health")

    assert healthy["rate_limit"] == {"status": "ok", "backend": "sqlite"}
    assert response.status_code == 200  # fail-open routes still serve: the gateway is not down
    body = json_of(response)
    assert body["rate_limit"]["status"] == "down"
    assert body["rate_limit"]["backend"] == "redis"


@pytest.mark.django_db
def test_a_failed_health_probe_of_the_store_does_not_close_sign_in(
    client: Client, users: StubUpstream, settings: Any, tmp_path: Path
) -> None:
    # given a store that cannot be opened (a directory where its file should be) when /health probes it
    settings.RATE_LIMIT_REDIS_URL = ""
    store = tmp_path / "ratelimit.sqlite3"
    store.mkdir()
    settings.RATE_LIMIT_SQLITE_PATH = store
    probed = json_of(client.get("/health"))

    # when the store works again
    store.rmdir()
    response = client.post("/api/v1/auth/token", {}, content_type="application/json")

    # then /health reported it, and sign-in, which fails closed, was never switched to 503 by that report
    assert probed["rate_limit"]["status"] == "down"
    assert response.status_code == 200
    assert rate_limit_headers(response)[1]["r"] == "9"
    assert len(users.received) == 1


@pytest.mark.django_db
def test_health_shows_when_requests_are_counting_without_the_store(
    client: Client, settings: Any, silent_store: SilentServer
) -> None:
    # given a store that hung on a request, which then left it alone for the back-off
    settings.RATE_LIMIT_REDIS_URL = silent_store.url
    settings.RATE_LIMIT_STORE_TIMEOUT = 0.1
    settings.RATE_LIMIT_STORE_RETRY_AFTER = 30.0
    assert client.get("/api/v1/products/").status_code == 200

    # when
    store = json_of(client.get("/health"))["rate_limit"]

    # then
    assert store["status"] == "down"
    assert 1 <= store["fallback_for_seconds"] <= 30


class SilentServer:
    """Accepts connections and never answers: a store that hangs. Counts the connections."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent_store() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_a_hanging_store_costs_one_timeout_then_is_left_alone_until_the_back_off_passes(
    client: Client, settings: Any, silent_store: SilentServer
) -> None:
    # given
    settings.RATE_LIMIT_REDIS_URL = silent_store.url
    settings.RATE_LIMIT_STORE_TIMEOUT = 0.2
    settings.RATE_LIMIT_STORE_RETRY_AFTER = 1.0

    # when the first request finds the store unresponsive
    started = time.monotonic()
    first = client.get("/api/v1/products/")
    first_took = time.monotonic() - started
    started = time.monotonic()
    during_back_off = [client.get("/api/v1/products/").status_code for _ in range(5)]
    back_off_took = time.monotonic() - started
    connections_during_back_off = len(silent_store.accepted)
    time.sleep(1.1)
    after_back_off = client.get("/api/v1/products/")

    # then
    assert first.status_code == 200
    assert 0.2 <= first_took < 1.0
    assert during_back_off == [200] * 5
    assert back_off_took < 0.5
    assert connections_during_back_off == 1
    assert after_back_off.status_code == 200
    assert len(silent_store.accepted) == 2  # one probe after the back-off


# The SQLite store


def test_the_sqlite_store_counts_expires_and_clears(tmp_path: Path) -> None:
    store = SQLiteStorage(path=tmp_path / "limits.sqlite3", key_prefix="p")
    other = SQLiteStorage(f"sqlite:///{tmp_path / 'limits.sqlite3'}", key_prefix="q")

    assert [store.incr("k", 60) for _ in range(3)] == [1, 2, 3]
    assert store.get("k") == 3
    assert other.get("k") == 0
    assert time.time() + 59 < store.get_expiry("k") <= time.time() + 60
    assert store.incr("short", 1) == 1
    time.sleep(1.05)
    assert store.get("short") == 0
    assert store.incr("short", 1) == 1  # a new window
    store.clear("k")
    assert store.get("k") == 0
    other.incr("k", 60)
    assert store.reset() == 1
    assert other.get("k") == 1
    assert store.check()


def test_the_sqlite_store_is_exact_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "limits.sqlite3"
    script = (
        "import sys\nfrom concurrent.futures import ThreadPoolExecutor\n"
        "from proxy.ratelimit_storage import SQLiteStorage\n"
        f"store = SQLiteStorage(path={str(path)!r}, timeout=5)\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    counts = list(pool.map(lambda _: store.incr('k', 60), range(200)))\n"
        "print(' '.join(map(str, counts)))\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_DIR, stdout=subprocess.PIPE, text=True)  # noqa: S603
        for _ in range(3)
    ]
    counts = [int(count) for process in processes for count in process.communicate(timeout=60)[0].split()]

    assert sorted(counts) == list(range(1, 601))  # every increment saw its own count: none lost, none repeated


# Exactness under a burst, against gunicorn with several worker processes


@contextmanager
def running_gateway(stubs: dict[str, StubUpstream], var_dir: Path, **environment: str) -> Iterator[Gateway]:
    """A gunicorn gateway with two worker processes; its access log names the worker of each request."""
    log_path = var_dir / "gunicorn.log"
    access_log = var_dir / "access.log"
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="gateway.settings",
        VAR_DIR=str(var_dir),
        SECRET_KEY=settings.SECRET_KEY,
        INTERNAL_AUTH_SECRET=settings.INTERNAL_AUTH_SECRET,
        USER_SERVICE_URL=stubs["users"].url,
        ORDER_SERVICE_URL=stubs["orders"].url,
        PAYMENT_SERVICE_URL=stubs["payments"].url,
        JWKS_URL=f"{stubs['users'].url}{JWKS_PATH}",
        UPSTREAM_CHECK_INTERVAL="0",
    )
    env["RATE_LIMIT_KEY_PREFIX"] = f"test-{uuid.uuid4().hex}"
    env.update(environment)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    command = [
        sys.executable, "-m", "gunicorn", "gateway.asgi:application",
        "--bind", f"fd://{listener.fileno()}",
        "--worker-class", "asgi", "--workers", "2",
        # A burst is shared because both workers' event loops wake for its connections and each accepts some
        # (measured over runs of the burst below: 2 to 18 of the 20 answered 200 in either worker).
        "--graceful-timeout", "2",
        "--no-control-socket",
        "--access-logfile", str(access_log), "--access-logformat", "%(p)s %(s)s %(U)s",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 (our own command line)
            command, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()]
        )
    server = Gateway(listener.getsockname()[1], log_path)
    try:
        # Both workers serving, or the first one up would accept the whole burst: each ASGI worker logs this
        # once its event loop accepts connections (both answering a request each would not show it: either
        # worker may take both).
        deadline = time.monotonic() + 60
        while server.log().count("ASGI server listening on") < 2:
            assert process.poll() is None, server.log()
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        status, _, _ = server.request("GET", "/api/v1/nothing/", timeout=60)
        assert status == 404, server.log()
        access_log.write_text("")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)
        listener.close()


def burst(gateway: Gateway, count: int, headers: dict[str, str] | None = None) -> list[tuple[int, Any]]:
    """``count`` requests sent at once, each on its own connection."""
    start = threading.Barrier(count)

    def one(_: int) -> tuple[int, Any]:
        start.wait()
        status, response_headers, _ = gateway.request("GET", "/api/v1/products/", headers=headers)
        return status, response_headers

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def workers_that_served(var_dir: Path, status: str = "200") -> set[str]:
    lines = (var_dir / "access.log").read_text().splitlines()
    return {line.split()[0] for line in lines if line.split()[1:2] == [status]}


LIMIT = 20
# A fixed window: a burst that straddled the window's end would be counted in two windows. A day makes
# that as good as impossible during a test.
BURST_RATE = f"{LIMIT}/day"


def assert_exactly_the_limit_got_through(results: list[tuple[int, Any]]) -> None:
    assert Counter(status for status, _ in results) == {200: LIMIT, 429: 1}
    remaining = sorted(int(rate_limit_headers(headers)[1]["r"]) for _, headers in results)
    assert remaining == [0, 0, *range(1, LIMIT)]  # each count was seen once: none lost, none repeated
    rejected = next(headers for status, headers in results if status == 429)
    assert int(rejected["Retry-After"]) >= 1


def test_a_burst_of_n_plus_one_gets_exactly_n_through_several_workers_in_embedded_mode(
    stubs: dict[str, StubUpstream], orders: StubUpstream, tmp_path: Path
) -> None:
    # given a gateway with two worker processes counting in its SQLite store, and a slow service, so the
    # burst's requests overlap in both workers
    orders.reply("/api/v1/products/", delay=0.5)
    with running_gateway(stubs, tmp_path, RATE_LIMIT_DEFAULT=BURST_RATE) as gateway:
        # when
        results = burst(gateway, LIMIT + 1)

        # then
        assert_exactly_the_limit_got_through(results)
        assert len(workers_that_served(tmp_path)) == 2
        assert (tmp_path / "gateway-ratelimit.sqlite3").exists()
        # and a spoofed X-Forwarded-For on a real socket buys nothing
        status, _, _ = gateway.request("GET", "/api/v1/products/", headers={"X-Forwarded-For": "198.51.100.7"})
        assert status == 429


REDIS_URL = os.environ.get("REDIS_URL", "")


@pytest.mark.skipif(not REDIS_URL, reason="real mode only (REDIS_URL)")
def test_a_burst_of_n_plus_one_gets_exactly_n_through_several_workers_against_redis(
    stubs: dict[str, StubUpstream], orders: StubUpstream, tmp_path: Path
) -> None:
    import redis

    orders.reply("/api/v1/products/", delay=0.5)
    prefix = f"test-{uuid.uuid4().hex}"
    try:
        with running_gateway(
            stubs, tmp_path, REDIS_URL=REDIS_URL, RATE_LIMIT_KEY_PREFIX=prefix, RATE_LIMIT_DEFAULT=BURST_RATE
        ) as gateway:
            results = burst(gateway, LIMIT + 1)

            assert_exactly_the_limit_got_through(results)
            assert len(workers_that_served(tmp_path)) == 2
            assert not (tmp_path / "gateway-ratelimit.sqlite3").exists()
            assert redis.Redis.from_url(REDIS_URL).keys(f"{prefix}:*")
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_with_redis_down_several_workers_serve_and_refuse_sign_in_without_a_500(
    stubs: dict[str, StubUpstream], tmp_path: Path
) -> None:
    with running_gateway(
        stubs, tmp_path, REDIS_URL=redis_url_on_a_closed_port(), RATE_LIMIT_DEFAULT="100/minute"
    ) as gateway:
        catalog = burst(gateway, 8)
        status, headers, body = gateway.request(
            "POST",
            "/api/v1/auth/token",
            headers={"Content-Length": "2", "Content-Type": "application/json"},
            body=b"{}",
        )

        assert [status for status, _ in catalog] == [200] * 8
        assert all(rate_limit_headers(headers)[0]["q"] == "100" for _, headers in catalog)
        assert status == 503
        assert b'"rate_limit_unavailable"' in body
        assert headers["Retry-After"]
        assert "Traceback" not in gateway.log()


@pytest.fixture
def redis_counters() -> Iterator[tuple[RedisCounterStorage, RedisStorage]]:
    """The gateway's Redis storage and `limits`' own, on one key prefix of the test's own."""
    import redis

    prefix = f"test-{uuid.uuid4().hex}"
    fast = RedisCounterStorage(REDIS_URL, key_prefix=prefix, wrap_exceptions=True)
    plain = RedisStorage(REDIS_URL, key_prefix=prefix, wrap_exceptions=True)
    yield fast, plain
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


@pytest.mark.skipif(not REDIS_URL, reason="real mode only (REDIS_URL)")
def test_the_gateways_redis_increment_counts_on_the_same_keys_as_limits(
    redis_counters: tuple[RedisCounterStorage, RedisStorage],
) -> None:
    fast, plain = redis_counters

    assert [fast.incr("k", 60), plain.incr("k", 60), fast.incr("k", 60, amount=3)] == [1, 2, 5]
    assert plain.get("k") == 5
    assert 0 < plain.get_expiry("k") - time.time() <= 60


@pytest.mark.skipif(not REDIS_URL, reason="real mode only (REDIS_URL)")
def test_the_gateways_redis_increment_survives_a_dropped_connection_and_a_flushed_script_cache(
    redis_counters: tuple[RedisCounterStorage, RedisStorage],
) -> None:
    import redis

    fast, plain = redis_counters
    admin = redis.Redis.from_url(REDIS_URL)
    assert fast.incr("k", 60) == 1

    # when Redis closes the idle connection (a restart, an idle timeout) and forgets its scripts
    connection = fast._thread_connection()
    connection.send_command("CLIENT", "ID")
    admin.client_kill_filter(_id=connection.read_response())
    admin.script_flush()  # redis-py's own scripts reload themselves after this: other clients are unharmed

    # then the next increment reconnects, sends the script again and counts on
    assert fast.incr("k", 60) == 2
    assert plain.get("k") == 2


def test_the_gateways_redis_increment_raises_a_storage_error_when_redis_is_unreachable() -> None:
    store = RedisCounterStorage(redis_url_on_a_closed_port(), wrap_exceptions=True)

    with pytest.raises(StorageError):
        store.incr("k", 60)


@pytest.mark.skipif(not REDIS_URL, reason="real mode only (REDIS_URL)")
def test_the_gateways_awaited_redis_increment_counts_on_the_same_keys_and_survives_a_dropped_connection(
    redis_counters: tuple[RedisCounterStorage, RedisStorage],
) -> None:
    import redis

    fast, plain = redis_counters
    admin = redis.Redis.from_url(REDIS_URL)

    async def scenario() -> list[int]:
        counts = [await fast.incr_async("k", 60), plain.incr("k", 60), await fast.incr_async("k", 60, amount=3)]
        # when Redis closes the loop's idle connection and forgets its scripts
        (connection,) = fast._idle_by_loop[asyncio.get_running_loop()]
        await connection.send_command("CLIENT", "ID")
        admin.client_kill_filter(_id=await connection.read_response())
        admin.script_flush()
        await asyncio.sleep(0.05)  # idle: the loop reads the server's close
        # then the next increment reconnects, sends the script again and counts on
        counts.append(await fast.incr_async("k", 60))
        # and increments in flight at once each get a connection
        counts += sorted(await asyncio.gather(*(fast.incr_async("k", 60) for _ in range(3))))
        return counts

    assert asyncio.run(scenario()) == [1, 2, 5, 6, 7, 8, 9]
    assert plain.get("k") == 9
    assert 0 < plain.get_expiry("k") - time.time() <= 60


def test_the_gateways_awaited_redis_increment_raises_a_storage_error_when_redis_is_unreachable_or_hangs(
    silent_store: SilentServer,
) -> None:
    closed = RedisCounterStorage(redis_url_on_a_closed_port(), wrap_exceptions=True, socket_timeout=0.2)
    hanging = RedisCounterStorage(silent_store.url, wrap_exceptions=True, socket_timeout=0.2)

    with pytest.raises(StorageError):
        asyncio.run(closed.incr_async("k", 60))
    started = time.monotonic()
    with pytest.raises(StorageError):
        asyncio.run(hanging.incr_async("k", 60))
    assert time.monotonic() - started < 1.0


class SlowRedis:
    """A relay in front of the real Redis that holds back for ``delay`` seconds its replies to commands
    naming a key under ``prefix`` (the rate limit's): a loaded Redis, or one across a slow network, for
    the counting alone. (The breakers share the same Redis and would time out on their own, bounded,
    inline calls.)"""

    def __init__(self, target_url: str, *, prefix: str, delay: float) -> None:
        from urllib.parse import urlsplit

        target = urlsplit(target_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 6379)
        self.database = target.path
        self.prefix = prefix.encode()
        self.delay = delay
        self.relayed: list[socket.socket] = []
        self.server = RawServer(self._relay)  # each client connection relayed on a thread of its own

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.server.listener.getsockname()[1]}{self.database}"

    def _relay(self, client: socket.socket) -> None:
        server = socket.create_connection(self.target)
        self.relayed += [client, server]
        slow = threading.Event()  # set while the command awaiting its reply names a counted key
        threading.Thread(target=self._replies, args=(server, client, slow), daemon=True).start()
        self._commands(client, server, slow)

    def _commands(self, source: socket.socket, sink: socket.socket, slow: threading.Event) -> None:
        with self._pumping(sink):
            while data := source.recv(65536):
                if self.prefix in data:
                    slow.set()
                sink.sendall(data)

    def _replies(self, source: socket.socket, sink: socket.socket, slow: threading.Event) -> None:
        with self._pumping(sink):
            while data := source.recv(65536):
                if slow.is_set():
                    slow.clear()
                    time.sleep(self.delay)
                sink.sendall(data)

    @staticmethod
    @contextmanager
    def _pumping(sink: socket.socket) -> Iterator[None]:
        try:
            yield
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()
        for sock in self.relayed:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.mark.skipif(not REDIS_URL, reason="real mode only (REDIS_URL)")
def test_a_slow_rate_limit_store_delays_each_request_but_does_not_hold_the_others(
    stubs: dict[str, StubUpstream], tmp_path: Path
) -> None:
    # given a gateway whose Redis takes half a second to answer each increment (its two workers would
    # answer 10 requests in 2.5 s or more if each waited for its increment before taking the next)
    prefix = f"test-{uuid.uuid4().hex}"
    slow = SlowRedis(REDIS_URL, prefix=prefix, delay=0.5)
    try:
        with running_gateway(
            stubs,
            tmp_path,
            REDIS_URL=slow.url,
            RATE_LIMIT_KEY_PREFIX=prefix,
            RATE_LIMIT_STORE_TIMEOUT="3",
            RATE_LIMIT_DEFAULT="100/day",  # a burst straddling a minute's end would count in two windows
        ) as gateway:
            # when ten requests arrive at once
            started = time.monotonic()
            results = burst(gateway, 10)
            took = time.monotonic() - started

            # then each was counted in Redis (no fallback) while the workers served the others
            assert [status for status, _ in results] == [200] * 10, results
            remaining = sorted(int(rate_limit_headers(headers)[1]["r"]) for _, headers in results)
            assert remaining == list(range(90, 100)), remaining
            assert took < 1.8
            assert "rate-limit store unavailable" not in gateway.log()
    finally:
        slow.close()
