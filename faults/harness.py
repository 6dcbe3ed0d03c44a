"""What the fault scenarios stand on: the real system started through the launcher's own ``System`` on free
loopback ports, in real mode (PostgreSQL, RabbitMQ, Redis) with its own databases, RabbitMQ virtual host
and Redis database; a fault proxy in front of every connection a fault is played on; a client of the public
API; and read-only counters over each service's database, the broker and the emails written."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
import requests
from celery import Celery
from kombu import Connection, Exchange, Queue

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import manage_all  # noqa: E402  the launcher (stdlib only) is how the system is started for real

T = TypeVar("T")
R = TypeVar("R")

HOST = "127.0.0.1"
PASSWORD = "fault tests password 42"  # noqa: S105  the made-up customers' password
VHOST = "shop_faults"
TAP_QUEUE = "faults.tap"  # a copy of every event published to the events exchange, read by the counters
EVENTS_EXCHANGE = Exchange("events", type="topic", durable=True)
DB_SUFFIX = "_faults"
REDIS_DB = 13  # a database of the shared Redis that the other runs on this machine do not use


class Failure(Exception):
    """The harness itself could not do something (not an invariant: those are reported, not raised)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def run_concurrently(function: Callable[[T], R], items: Iterable[T], *, threads: int) -> list[R]:
    """``function`` over ``items`` on ``threads`` threads, in order. Interrupted (the watchdog, Ctrl-C), it
    cancels what has not started instead of waiting for all of it, as ``with ThreadPoolExecutor`` would."""
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        return list(pool.map(function, items))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# Infrastructure: databases, virtual host


@dataclass(frozen=True)
class Infrastructure:
    database_urls: dict[str, str]  # service name -> postgres URL of its own throw-away database
    broker_host: str
    broker_port: int
    redis_url: str

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Infrastructure:
        urls = {}
        for service in manage_all.SERVICES:
            base = env.get(service.database_env) or f"postgres://postgres@{HOST}:5432/shop_{service.name}"
            parts = urlsplit(base)
            if not parts.scheme.startswith("postgres"):
                raise Failure(f"{service.database_env} must be a PostgreSQL URL for the fault tests: {base}")
            name = parts.path.lstrip("/") + DB_SUFFIX
            urls[service.name] = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
        broker = urlsplit(env.get("BROKER_URL") or f"amqp://guest:guest@{HOST}:5672//")
        if broker.scheme not in ("amqp", "pyamqp"):
            raise Failure(f"BROKER_URL must be RabbitMQ (amqp://) for the fault tests: {broker.geturl()}")
        redis = urlsplit(env.get("REDIS_URL") or f"redis://{HOST}:6379/0")
        return cls(
            database_urls=urls,
            broker_host=broker.hostname or HOST,
            broker_port=broker.port or 5672,
            redis_url=urlunsplit((redis.scheme, redis.netloc, f"/{REDIS_DB}", "", "")),
        )

    def broker_url(self, *, port: int | None = None) -> str:
        return f"amqp://guest:guest@{self.broker_host}:{port or self.broker_port}/{VHOST}"

    def check_reachable(self) -> None:
        redis = urlsplit(self.redis_url)
        targets = {
            "PostgreSQL": (urlsplit(self.database_urls["users"]).hostname or HOST, 5432),
            "RabbitMQ": (self.broker_host, self.broker_port),
            "Redis": (redis.hostname or HOST, redis.port or 6379),
        }
        for what, address in targets.items():
            try:
                socket.create_connection(address, timeout=3).close()
            except OSError as error:
                raise Failure(f"{what} is not reachable at {address[0]}:{address[1]}: {error}") from None

    def create_databases(self) -> None:
        for url in self.database_urls.values():
            parts = urlsplit(url)
            name = parts.path.lstrip("/")
            admin = urlunsplit((parts.scheme.replace("postgresql", "postgres"), parts.netloc, "/postgres", "", ""))
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                connection.execute(f'CREATE DATABASE "{name}"')

    def create_vhost(self) -> None:
        """A fresh virtual host of our own: nothing another run left queued reaches this one, and nothing we
        leave behind reaches anyone else."""
        self.delete_vhost()
        for args in (["add_vhost", VHOST], ["set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"]):
            result = subprocess.run(  # noqa: S603
                ["rabbitmqctl", "-q", *args],  # noqa: S607
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
            if result.returncode != 0:
                raise Failure(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")

    def delete_vhost(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(  # noqa: S603
                ["rabbitmqctl", "-q", "delete_vhost", VHOST],  # noqa: S607
                capture_output=True,
                check=False,
                timeout=60,
            )

    def query(self, service: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read-only query on a service's database (the harness counts; it never writes there)."""
        with psycopg.connect(self.database_urls[service], autocommit=True) as connection:
            return list(connection.execute(sql, params).fetchall())  # type: ignore[arg-type]

    def scalar(self, service: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.query(service, sql, params)
        return rows[0][0] if rows else None


# --------------------------------------------------------------------------------------------------
# The system, with its dependencies behind fault proxies


@dataclass
class FaultSystem(manage_all.System):
    """The launcher's System, with per-service environment overrides (each service reaches RabbitMQ, and
    the order service reaches the payment service, through a fault proxy of its own) and the means to kill
    and restart one of its processes."""

    overrides: dict[str, dict[str, str]] = field(default_factory=dict)  # by service
    process_overrides: dict[str, dict[str, str]] = field(default_factory=dict)  # by process name, on top
    _spawning: str | None = None

    def env_for(self, service: manage_all.Service) -> dict[str, str]:
        env = super().env_for(service)
        env.update(self.overrides.get(service.name, {}))
        if self._spawning is not None:
            env.update(self.process_overrides.get(self._spawning, {}))
        return env

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(getattr(manage_all.System, "_spawn", None)):
            raise Failure("the launcher's System._spawn changed: update FaultSystem, which wraps it")

    def _spawn(self, name: str, service: manage_all.Service, command: list[str], log_dir: Path | None) -> None:
        # The launcher asks env_for(service) while spawning; this is how a process gets its own overrides.
        self._spawning = name
        try:
            super()._spawn(name, service, command, log_dir)
        finally:
            self._spawning = None

    def process(self, name: str) -> manage_all.Process:
        for process in self.processes:
            if process.name == name:
                return process
        raise Failure(f"no process named {name!r}; running: {', '.join(p.name for p in self.processes)}")

    def has_process(self, name: str) -> bool:
        return any(process.name == name for process in self.processes)

    def kill(self, name: str) -> None:
        """SIGKILL the process and its whole group (a Celery worker's pool children too): no clean-up."""
        process = self.process(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=10)

    def restart(self, name: str) -> None:
        """Start the process again with the same command, directory and environment, output appended to the
        same log."""
        process = self.process(name)
        if process.popen.poll() is None:
            raise Failure(f"{name} is still running")
        service = manage_all.SERVICES_BY_NAME[name.split("-")[0]]
        self.processes.remove(process)
        log_dir = process.log_path.parent if process.log_path else None
        self._spawn(name, service, [str(arg) for arg in process.popen.args], log_dir)  # type: ignore[union-attr]

    def log_text(self, name: str) -> str:
        path = self.process(name).log_path
        return path.read_text(errors="replace") if path and path.exists() else ""


# --------------------------------------------------------------------------------------------------
# Clients: the public API, and a publisher and a tap on the broker (directly, never through a proxy)


@dataclass
class Customer:
    email: str
    user_id: int
    token: str


class Api:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            self._local.session = session
        return session

    def post(
        self,
        path: str,
        body: Any,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> requests.Response:
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        return self.session.post(self.base_url + path, json=body, headers=all_headers, timeout=timeout)

    def get(self, path: str, *, token: str | None = None, timeout: float = 30.0) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.session.get(self.base_url + path, headers=headers, timeout=timeout)

    def sign_up(self, label: str) -> Customer:
        email = f"faults-{label}-{uuid.uuid4().hex[:8]}@example.com"
        created = self.post("/api/v1/users/", {"email": email, "name": f"Fault {label}", "password": PASSWORD})
        if created.status_code != 201:
            raise Failure(f"sign-up failed: {created.status_code} {created.text[:300]}")
        tokens = self.post("/api/v1/auth/token", {"email": email, "password": PASSWORD})
        if tokens.status_code != 200:
            raise Failure(f"sign-in failed: {tokens.status_code} {tokens.text[:300]}")
        return Customer(email=email, user_id=int(created.json()["id"]), token=tokens.json()["access"])

    def products(self) -> list[int]:
        response = self.get("/api/v1/products/")
        if response.status_code != 200:
            raise Failure(f"catalog failed: {response.status_code} {response.text[:300]}")
        body = response.json()
        items = body["results"] if isinstance(body, dict) else body
        return [int(item["id"]) for item in items]


@dataclass
class OrderAttempt:
    status: int  # of the last response; 0: no response at all
    order_id: int | None
    order_status: str
    seconds: float
    attempts: int
    finished_at: float = field(default_factory=time.monotonic)


def place_order(
    api: Api,
    customer: Customer,
    product_id: int,
    *,
    payment_method: str = "tok_visa",
    key: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
) -> OrderAttempt:
    """Place one order as a careful client would: with an Idempotency-Key, retrying the same request on a
    network error, a 5xx or a 409 (the key still in use), so that "committed" means the client knows."""
    key = key or f"faults-{uuid.uuid4()}"
    body = {"items": [{"product_id": product_id, "quantity": 1}], "payment_method": payment_method}
    started = time.monotonic()
    status = 0
    for attempt in range(1, retries + 2):
        try:
            response = api.post(
                "/api/v1/orders/", body, token=customer.token, headers={"Idempotency-Key": key}, timeout=timeout
            )
        except requests.RequestException:
            status = 0
        else:
            status = response.status_code
            if status in (200, 201, 202):
                data = response.json()
                return OrderAttempt(status, int(data["id"]), data["status"], time.monotonic() - started, attempt)
            if status < 500 and status != 409:
                break
        time.sleep(0.5 * attempt)
    return OrderAttempt(status, None, "", time.monotonic() - started, retries + 1)


class BrokerTap:
    """A queue of our own bound to every event type on the events exchange: each publish the relays make
    lands here once, so the counters see duplicate publishes that the consumers' inbox then absorbs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: Counter[str] = Counter()  # event id -> times published
        self.types: dict[str, str] = {}  # event id -> type
        self.data: dict[str, dict[str, Any]] = {}

    def declare(self) -> None:
        with Connection(self.url) as connection:
            channel = connection.default_channel
            EVENTS_EXCHANGE(channel).declare()
            Queue(TAP_QUEUE, EVENTS_EXCHANGE, routing_key="#", durable=True)(channel).declare()

    def drain(self) -> list[str]:
        """Read what was published since the last drain; the ids read, in order."""
        fresh: list[str] = []
        with Connection(self.url) as connection:
            queue = Queue(TAP_QUEUE, EVENTS_EXCHANGE, routing_key="#", durable=True)(connection.default_channel)
            while True:
                message = queue.get(no_ack=True, accept=["json"])
                if message is None:
                    break
                event = _event_of(message.decode())
                if event is None:
                    continue
                event_id = str(event["id"])
                self.seen[event_id] += 1
                self.types[event_id] = str(event.get("type"))
                self.data[event_id] = dict(event.get("data") or {})
                fresh.append(event_id)
        return fresh

    def duplicates(self, event_ids: set[str] | None = None) -> int:
        return sum(count - 1 for event_id, count in self.seen.items() if event_ids is None or event_id in event_ids)


def _event_of(body: Any) -> dict[str, Any] | None:
    # A Celery task message (protocol 2): the body is [args, kwargs, embed]; the event is kwargs["event"].
    if isinstance(body, list | tuple) and len(body) >= 2 and isinstance(body[1], dict):
        event = body[1].get("event")
        return event if isinstance(event, dict) else None
    return None


class EventPublisher:
    """Publishes events straight to the events exchange, as a relay would (Celery task ``events.handle``,
    persistent, confirmed), for the consumer scenarios."""

    def __init__(self, url: str) -> None:
        self.app = Celery("faults", broker=url, set_as_current=False)
        self.app.conf.broker_transport_options = {"confirm_publish": True}
        self.app.conf.task_serializer = "json"

    def publish(self, event_type: str, data: dict[str, Any]) -> str:
        event_id = str(uuid.uuid4())
        event = {
            "id": event_id,
            "type": event_type,
            "version": 1,
            "source": "faults",
            "occurred_at": datetime.now(UTC).isoformat(),
            "request_id": f"faults-{event_id[:8]}",
            "aggregate_id": str(data.get("order_id", "")),
            "trace_context": {},
            "data": data,
        }
        self.app.send_task(
            "events.handle",
            kwargs={"event": event},
            task_id=event_id,
            exchange=EVENTS_EXCHANGE,
            routing_key=event_type,
            delivery_mode=2,
        )
        return event_id

    def close(self) -> None:
        self.app.close()


# --------------------------------------------------------------------------------------------------
# Counters


_ORDER_SUBJECT = re.compile(r"^Subject: Your order #(\d+) is confirmed", re.MULTILINE)


def confirmation_mails(var_dir: Path) -> Counter[int]:
    """Order id -> confirmation emails written by the email backend (files under var/mail/): the emails as
    sent, whatever the database says."""
    counts: Counter[int] = Counter()
    for path in sorted((var_dir / "mail").glob("*")):
        with contextlib.suppress(OSError):
            counts.update(int(match) for match in _ORDER_SUBJECT.findall(path.read_text(errors="replace")))
    return counts


def task_receipts(log_text: str, task_ids: set[str]) -> Counter[str]:
    """How many times a Celery worker took each of these task ids (= event ids) off its queue, from its log
    ("Task events.handle[<id>] received"): deliveries, redeliveries and retries."""
    counts: Counter[str] = Counter()
    for match in re.finditer(r"Task events\.handle\[([0-9a-f-]{36})\] received", log_text):
        if match.group(1) in task_ids:
            counts[match.group(1)] += 1
    return counts


def dead_letters(url: str, queue: str) -> list[dict[str, Any]]:
    """The dead letters waiting in ``queue``'s dead-letter queue, read and given back (never acknowledged)."""
    letters: list[dict[str, Any]] = []
    with Connection(url) as connection:
        channel = connection.channel()
        try:
            dead = Queue(f"{queue}.dead", exchange="", routing_key=f"{queue}.dead", durable=True)(channel)
            dead.declare()
            while True:
                message = dead.get(no_ack=False, accept=["json"])
                if message is None:
                    break
                body = message.decode()
                if isinstance(body, list):  # the task message itself, dead-lettered by RabbitMQ (delivery limit)
                    _args, kwargs, _embed = body
                    retries = int((message.headers or {}).get("retries") or 0)
                    body = {"event": kwargs["event"], "queue": queue, "attempts": retries + 1, "by": "rabbitmq"}
                letters.append(body)
        finally:
            channel.close()  # gives back every message fetched and not acknowledged
    return letters
