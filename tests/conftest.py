"""Start the whole system once per test session, exactly as ``manage_all.py up`` does, but on free loopback
ports with a throw-away var/ folder (and, in real mode, throw-away PostgreSQL databases)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import manage_all  # noqa: E402  (the launcher lives at the repository root)

REAL_MODE_VARIABLES = ("BROKER_URL", "REDIS_URL", *(s.database_env for s in manage_all.SERVICES))
PASSWORD = "correct horse battery staple 42"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def reachable(url: str) -> bool:
    parts = urlsplit(url)
    default_ports = {"postgres": 5432, "postgresql": 5432, "amqp": 5672, "redis": 6379}
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_ports[parts.scheme]), 2):
            return True
    except OSError:
        return False


def fresh_database(url: str) -> str:
    """A new, empty database beside the configured one, so the tests never touch a developer's data."""
    import psycopg

    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/')}_e2e"
    admin_url = urlunsplit((parts.scheme.replace("postgresql", "postgres"), parts.netloc, "/postgres", "", ""))
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def purge_event_queues(broker_url: str) -> None:
    """Drop events an earlier run left queued: they name users and orders of databases since recreated,
    and ids start again at 1, so they would reach this run's users (use a dedicated vhost for the tests)."""
    from kombu import Connection

    with Connection(broker_url) as connection:
        for service in manage_all.SERVICES:
            for queue in (*service.worker_queues, *(f"{name}.dead" for name in service.worker_queues)):
                # A channel each: RabbitMQ closes the channel of a purge that fails (queue not declared yet).
                with contextlib.suppress(Exception), connection.channel() as channel:
                    channel.queue_purge(queue)


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[manage_all.System]:
    env = dict(os.environ)
    real = {name: env[name] for name in REAL_MODE_VARIABLES if env.get(name)}
    unreachable = [name for name, url in real.items() if not reachable(url)]
    if unreachable:
        message = f"real mode configured but unreachable: {', '.join(unreachable)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # in CI a skipped real-mode run would hide a broken setup
        pytest.skip(message)
    for service in manage_all.SERVICES:
        if env.get(service.database_env):
            env[service.database_env] = fresh_database(env[service.database_env])
    if env.get("BROKER_URL", "").startswith("amqp"):
        purge_event_queues(env["BROKER_URL"])
    env["LOGIN_RATE"] = "1000/min"  # the journey signs in many times from one address
    env.setdefault("RATE_LIMIT_LOGIN", "1000/minute")  # the gateway's per-address limit on sign-in, likewise
    env["RATE_LIMIT_KEY_PREFIX"] = f"e2e-{uuid.uuid4().hex}:ratelimit"  # no quota spent by an earlier run
    # Key rotation is tested end to end (test_attacks_auth.py): keys cached briefly, so a retired key goes
    # within seconds, and a rotated-in key published for longer than the refresh interval before it signs.
    env["JWKS_CACHE_TTL"] = "2"
    env["JWKS_MIN_REFRESH_INTERVAL"] = "1"
    # Service discovery: with ETCD_URL (CI's real mode) the services register in etcd under a prefix of this
    # run's own; otherwise the launcher's static lists. Two order instances either way (test_discovery_scale).
    if env.get("ETCD_URL"):
        env["DISCOVERY_BACKEND"] = "etcd"
        env["ETCD_PREFIX"] = f"/e2e-{uuid.uuid4().hex}/"
    env["GUNICORN_CMD_ARGS"] = "--access-logfile -"  # which instance served a call (test_discovery_scale)

    system = manage_all.System(
        var_dir=tmp_path_factory.mktemp("var"),
        ports={service.name: free_port() for service in manage_all.SERVICES},
        base_env=env,
        web_workers=1,
        scale={"orders": 2},
    )
    system.prepare()
    system.start(log_dir=system.var_dir / "log")
    try:
        system.wait_healthy(timeout=120)
        yield system
    finally:
        system.stop()
        for log in sorted((system.var_dir / "log").glob("*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                print(f"\n----- {log.name} -----\n{text[-4000:]}")


@pytest.fixture(scope="session")
def admin_account(system: manage_all.System) -> tuple[str, str]:
    email, password = "admin@example.com", "an admin password 123"
    assert list(manage_all.create_superuser(system, email=email, name="Admin", password=password))
    return email, password


@pytest.fixture(scope="session")
def gateway(system: manage_all.System) -> str:
    return system.url("gateway")


class Client:
    """A thin client of the public API: JSON in and out, with an optional bearer token."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url
        self.token = token
        self.session = requests.Session()
        self.session.trust_env = False

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        return self.session.request(method, self.base_url + path, headers=headers, timeout=20, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)


@pytest.fixture
def anonymous(gateway: str) -> Client:
    return Client(gateway)


def sign_up(gateway: str, *, name: str = "Ada Lovelace") -> tuple[Client, dict[str, Any]]:
    email = f"ada-{uuid.uuid4().hex[:10]}@example.com"
    client = Client(gateway)
    created = client.post("/api/v1/users/", json={"email": email, "name": name, "password": PASSWORD})
    assert created.status_code == 201, created.text
    tokens = client.post("/api/v1/auth/token", json={"email": email, "password": PASSWORD})
    assert tokens.status_code == 200, tokens.text
    client.token = tokens.json()["access"]
    return client, {**created.json(), **tokens.json()}


@pytest.fixture
def customer(gateway: str) -> tuple[Client, dict[str, Any]]:
    return sign_up(gateway)


def sent_mails(var_dir: Path) -> list[str]:
    """Every message Django's file email backend wrote under var/mail/ (a file holds a connection's messages,
    each followed by a line of dashes)."""
    messages = []
    for path in sorted((var_dir / "mail").glob("*")):
        messages += [m for m in path.read_text(errors="replace").split("-" * 79) if m.strip()]
    return messages


def wait_for_mail(var_dir: Path, *needles: str, timeout: float = 30) -> str:
    """The first email containing every needle (the user service's worker sends asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in sent_mails(var_dir):
            if all(needle in message for needle in needles):
                return message
        time.sleep(0.3)
    raise AssertionError(f"no email containing {needles} within {timeout}s")
