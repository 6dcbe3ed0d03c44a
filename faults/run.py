#!/usr/bin/env python3
"""Fault tests of the event pipeline, the order saga and the gateway, in real mode, with figures.

    .venv/bin/python faults/run.py                  # every scenario: 3 to 7 minutes, by the machine's load
    .venv/bin/python faults/run.py --only 6,5       # some of them
    .venv/bin/python faults/run.py --orders 100     # scenario 1 with fewer orders

Run on demand and by ``.ci/run`` in real mode; not part of the pytest suites. It starts the whole system
through the launcher's own ``System`` on free loopback ports, on PostgreSQL (its own ``<db>_faults``
databases), RabbitMQ (its own virtual host ``shop_faults``, created and deleted with ``rabbitmqctl``) and
Redis (database 13). Every service reaches RabbitMQ through a fault proxy of its own, and the order
service reaches the payment service through one too (``faults/tcpproxy.py``), so an outage is played on
the proxies, never on the machine's shared servers. The harness counts by reading each service's
database (read-only), the emails the user service's worker wrote, the workers' logs, and a tap queue that
receives a copy of every event published to the ``events`` exchange.

Scenarios:
  1. RabbitMQ cut for 10 s while orders are placed: orders = order.confirmed delivered = emails, outbox drains
  2. the consumer worker SIGKILLed with effects done but acknowledgements not received: 0 lost, 0 duplicates
  3. a poison event: exactly EVENT_MAX_ATTEMPTS attempts, one dead letter, other events keep flowing
  4. the order relay SIGKILLed between the broker's confirm and "mark sent": duplicate publishes, no
     duplicate effects; and a confirm that never comes: the relay gives the publish up and sends it again
  5. the payment service refused, then slower than the order service's timeout, while orders are placed:
     no double charge, no confirmation without a charge, every order settled soon after recovery
  6. ten concurrent identical POST /api/v1/orders/ with one Idempotency-Key: one order, one charge
  7. the order service's hypothesis state machine over the saga (orders/tests/test_saga_properties.py)
     with many more examples than the suite runs, on PostgreSQL: charges per order <= 1, total charged =
     total paid minus refunded, stock conserved; the counts of what it did
  8. the gateway under slow-client attack (request heads and bodies sent a byte at a time, answers never
     read) from more connections than it has threads: customers' requests meanwhile all answered, and
     promptly; every attacker cut off at its deadline; no attacker's order reaches the order service

It prints what each scenario did and its figures, then a summary table; the exit status is 1 when any
invariant failed (or the harness could not run), 0 otherwise. Everything it started is stopped on exit,
on errors and on Ctrl-C; a watchdog interrupts the run if it exceeds ``--time-limit``.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PYTHON.exists():
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), __file__, *sys.argv[1:]])  # noqa: S606  the project's own venv
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402  (after the re-exec into .venv, which has it)

from faults.harness import (  # noqa: E402
    Api,
    BrokerTap,
    Customer,
    EventPublisher,
    Failure,
    FaultSystem,
    Infrastructure,
    OrderAttempt,
    confirmation_mails,
    dead_letters,
    free_port,
    log,
    manage_all,
    place_order,
    run_concurrently,
    task_receipts,
    wait_until,
)
from faults.tcpproxy import FaultProxy  # noqa: E402

# Settings the run gives the services: fast retries so that the scenarios finish in seconds, limits high
# enough for one client address placing hundreds of orders.
MAX_ATTEMPTS = 4
# Deliveries of one attempt without an outcome before RabbitMQ dead-letters it: above what scenario 2's kills
# (and scenario 1's cut connections) can cause one event, so no good event is dead-lettered by them.
DELIVERY_LIMIT = 10
CONFIRM_TIMEOUT = 2.0
RUN_SETTINGS = {
    "LOGIN_RATE": "100000/min",
    "RATE_LIMIT_DEFAULT": "100000/minute",
    "RATE_LIMIT_LOGIN": "100000/minute",
    "RATE_LIMIT_KEY_PREFIX": "faults:ratelimit",
    "JWT_ACCESS_TOKEN_LIFETIME": "1800",
    "SERVICE_CONNECT_TIMEOUT": "1",
    "SERVICE_READ_TIMEOUT": "2",
    "ORDER_SAGA_LEASE_SECONDS": "15",
    "ORDER_SAGA_RETRY_BASE_SECONDS": "0.5",
    "ORDER_SAGA_RETRY_MAX_SECONDS": "2",
    "ORDER_SAGA_SWEEP_INTERVAL": "1",
    # A killed relay's claimed rows come back after this (scenario 4 waits for it); 30 s by default.
    "OUTBOX_LEASE_SECONDS": "5",
    # A publish whose confirm never comes is given up after this (scenario 4's last round); below the lease.
    "OUTBOX_CONFIRM_TIMEOUT": str(CONFIRM_TIMEOUT),
    "OUTBOX_RETRY_BACKOFF": "0.2",
    "OUTBOX_RETRY_BACKOFF_MAX": "2",
    "EVENT_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "EVENT_DELIVERY_LIMIT": str(DELIVERY_LIMIT),
    "EVENT_RETRY_BACKOFF": "0.2",
    "EVENT_RETRY_BACKOFF_MAX": "1",
    "LOG_LEVEL": "INFO",
    # Scenario 8's attackers are cut off after these (10, 30 and 60 s by default).
    "GATEWAY_REQUEST_HEAD_TIMEOUT": "3",
    "GATEWAY_REQUEST_BODY_TIMEOUT": "3",
    "GATEWAY_SEND_TIMEOUT": "3",
}
ATTACK_DEADLINE = 3.0  # the three gateway timeouts above
PAYMENT_READ_TIMEOUT = float(RUN_SETTINGS["SERVICE_READ_TIMEOUT"])
ORDER_DEADLINE = 15.0  # the gateway's read timeout: POST /orders/ must answer within it
SETTLED = ("confirmed", "cancelled")


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class Result:
    number: int
    title: str
    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def note(self, text: str) -> None:
        log(f"  {text}")

    def figure(self, name: str, value: Any) -> None:
        self.figures[name] = value

    def check(self, ok: bool, invariant: str) -> bool:
        if not ok:
            self.failures.append(invariant)
        log(f"  {'ok  ' if ok else 'FAIL'} {invariant}")
        return ok

    @property
    def passed(self) -> bool:
        return not self.failures


# --------------------------------------------------------------------------------------------------
# The run: system, proxies, customers


@dataclass
class Run:
    infra: Infrastructure
    system: FaultSystem
    broker_proxies: dict[str, FaultProxy]
    payments_proxy: FaultProxy
    api: Api
    tap: BrokerTap
    publisher: EventPublisher
    publisher_url: str  # RabbitMQ directly, never through a proxy: the harness's own connections
    customers: list[Customer]
    products: list[int]

    @property
    def proxies(self) -> list[FaultProxy]:
        return [*self.broker_proxies.values(), self.payments_proxy]

    # counters over the services' databases ------------------------------------------------------------

    def max_order_id(self) -> int:
        return int(self.infra.scalar("orders", "SELECT COALESCE(MAX(id), 0) FROM orders_order"))

    def orders_after(self, order_id: int) -> dict[int, dict[str, Any]]:
        rows = self.infra.query(
            "orders",
            "SELECT id, status, payment_id, payment_status, cancellation_reason, user_id FROM orders_order "
            "WHERE id > %s",
            (order_id,),
        )
        keys = ("id", "status", "payment_id", "payment_status", "cancellation_reason", "user_id")
        return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}

    def payments_for(self, order_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
        rows = self.infra.query(
            "payments",
            "SELECT id, order_id, status, idempotency_key FROM payments_payment WHERE order_id = ANY(%s)",
            (list(order_ids),),
        )
        found: dict[int, list[dict[str, Any]]] = {}
        for payment_id, order_id, status, key in rows:
            found.setdefault(order_id, []).append({"id": payment_id, "status": status, "key": key})
        return found

    def pending_outbox(self) -> dict[str, int]:
        return {
            service: int(self.infra.scalar(service, "SELECT COUNT(*) FROM messaging_outboxevent WHERE sent_at IS NULL"))
            for service in ("users", "orders", "payments")
        }

    def confirmed_events(self, order_ids: set[int]) -> dict[str, int]:
        """Event id -> order id of the order.confirmed events the order service recorded for these orders."""
        rows = self.infra.query(
            "orders", "SELECT id::text, data->>'order_id' FROM messaging_outboxevent WHERE type = 'order.confirmed'"
        )
        return {event_id: int(order_id) for event_id, order_id in rows if int(order_id) in order_ids}

    def handled(self, event_ids: Iterable[str]) -> set[str]:
        rows = self.infra.query(
            "users", "SELECT event_id FROM messaging_inboxevent WHERE event_id = ANY(%s)", (list(event_ids),)
        )
        return {row[0] for row in rows}

    def sent_email_rows(self, event_ids: Iterable[str]) -> Counter[str]:
        rows = self.infra.query(
            "users",
            "SELECT event_id::text FROM notifications_sentemail WHERE kind = 'order_confirmation' "
            "AND event_id = ANY(%s::uuid[])",
            (list(event_ids),),
        )
        return Counter(row[0] for row in rows)

    def mails(self) -> Counter[int]:
        return confirmation_mails(self.system.var_dir)

    # actions ----------------------------------------------------------------------------------------

    def place_many(self, count: int, *, threads: int, declined_every: int = 0) -> list[OrderAttempt]:
        """``count`` orders of one unit each, spread over the customers and products, ``threads`` at a time;
        with ``declined_every=n``, every n-th pays with a card that is declined."""

        def one(index: int) -> OrderAttempt:
            customer = self.customers[index % len(self.customers)]
            declined = declined_every and index % declined_every == declined_every - 1
            method = "tok_chargeDeclined" if declined else "tok_visa"
            return place_order(self.api, customer, self.products[index % len(self.products)], payment_method=method)

        return run_concurrently(one, range(count), threads=threads)

    def stock_total(self) -> int:
        """Units on the shelves plus units held for orders: constant unless an operator restocks."""
        shelves = self.infra.scalar("orders", "SELECT COALESCE(SUM(stock), 0) FROM catalog_product")
        held = self.infra.scalar(
            "orders", "SELECT COALESCE(SUM(quantity), 0) FROM catalog_stockreservation WHERE status = 'held'"
        )
        return int(shelves) + int(held)

    def reservations(self, order_ids: Iterable[int]) -> dict[int, list[str]]:
        """Order id -> the statuses of its stock reservations."""
        rows = self.infra.query(
            "orders",
            "SELECT o.id, r.status FROM orders_order o JOIN catalog_stockreservation r "
            "ON r.order_reference = o.reference WHERE o.id = ANY(%s)",
            (list(order_ids),),
        )
        found: dict[int, list[str]] = {}
        for order_id, status in rows:
            found.setdefault(order_id, []).append(status)
        return found

    def settle(self, order_ids: set[int], timeout: float) -> bool:
        def settled() -> bool:
            orders = self.orders_after(min(order_ids) - 1)
            return all(orders.get(order_id, {}).get("status") in SETTLED for order_id in order_ids)

        return wait_until(settled, timeout=timeout, interval=0.5)


def build(args: argparse.Namespace, var_dir: Path) -> Run:
    """Databases, virtual host, proxies and the (not yet started) system."""
    infra = Infrastructure.from_environment(os.environ)
    infra.check_reachable()
    log("creating databases (<db>_faults) and the RabbitMQ virtual host shop_faults")
    infra.create_databases()
    infra.create_vhost()
    direct_url = infra.broker_url()
    tap = BrokerTap(direct_url)
    tap.declare()

    ports = {service.name: free_port() for service in manage_all.SERVICES}
    # One broker proxy per process (a service's web processes and manage.py commands share the service's):
    # a fault can then be aimed at one worker or one relay, or at all of them.
    broker_proxies = {
        name: FaultProxy(f"{name}-broker", infra.broker_port, infra.broker_host, amqp=True).start()
        for name in manage_all.process_names()
    }
    payments_proxy = FaultProxy("payments-http", ports["payments"]).start()
    overrides = {
        service.name: {"BROKER_URL": infra.broker_url(port=broker_proxies[service.name].port)}
        for service in manage_all.SERVICES
    }
    # Every order process that calls the payment service (web, and the saga's background) goes through it.
    overrides["orders"]["PAYMENT_SERVICE_URL"] = f"http://127.0.0.1:{payments_proxy.port}"
    process_overrides = {
        name: {"BROKER_URL": infra.broker_url(port=proxy.port)}
        for name, proxy in broker_proxies.items()
        if name not in manage_all.SERVICES_BY_NAME
    }

    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "BROKER_URL", "REDIS_URL", "VAR_DIR") and not key.endswith("_DATABASE_URL")
    }
    env.update(RUN_SETTINGS)
    env["REDIS_URL"] = infra.redis_url
    for service in manage_all.SERVICES:
        env[service.database_env] = infra.database_urls[service.name]
    system = FaultSystem(
        var_dir=var_dir,
        ports=ports,
        base_env=env,
        web_workers=2,
        overrides=overrides,
        process_overrides=process_overrides,
    )
    return Run(
        infra=infra,
        system=system,
        broker_proxies=broker_proxies,
        payments_proxy=payments_proxy,
        api=Api(system.url("gateway")),
        tap=tap,
        publisher=EventPublisher(direct_url),
        publisher_url=direct_url,
        customers=[],
        products=[],
    )


def launch(run: Run, args: argparse.Namespace) -> None:
    system = run.system
    log("migrating, declaring queues, loading the catalog (the launcher's System.prepare)")
    system.prepare()
    log(f"starting {', '.join(manage_all.process_names())} on free ports; logs in {system.var_dir / 'log'}")
    system.start(log_dir=system.var_dir / "log")
    system.wait_healthy(timeout=150)
    log("healthy; signing up customers")
    run.customers = run_concurrently(run.api.sign_up, [f"c{i}" for i in range(args.customers)], threads=4)
    run.products = run.api.products()
    log(f"{len(run.customers)} customers, products {run.products}")


def stop(run: Run) -> None:
    run.system.stop()
    run.publisher.close()
    for proxy in run.proxies:
        proxy.stop()
    run.infra.delete_vhost()


# --------------------------------------------------------------------------------------------------
# Scenario 6: ten concurrent identical requests with one Idempotency-Key


def scenario_6(run: Run, result: Result) -> None:
    customer = run.customers[0]
    key = f"faults-idem-{uuid.uuid4()}"
    body = {"items": [{"product_id": run.products[0], "quantity": 2}], "payment_method": "tok_visa"}
    before = run.max_order_id()
    barrier = threading.Barrier(10)

    def post(payload: dict[str, Any]) -> requests.Response:
        return run.api.post(
            "/api/v1/orders/", payload, token=customer.token, headers={"Idempotency-Key": key}, timeout=ORDER_DEADLINE
        )

    def send(_: int) -> tuple[int, requests.Response]:
        barrier.wait(timeout=30)
        first = post(body)
        response = first
        # A client told 409 (the first request still runs) retries the same request until it gets the answer.
        deadline = time.monotonic() + ORDER_DEADLINE
        while response.status_code == 409 and time.monotonic() < deadline:
            time.sleep(0.2)
            response = post(body)
        return first.status_code, response

    answers = run_concurrently(send, range(10), threads=10)
    first_statuses = Counter(status for status, _ in answers)
    finals = [response for _, response in answers]
    final_statuses = Counter(response.status_code for response in finals)
    replayed = [response for response in finals if response.headers.get("Idempotent-Replayed") == "true"]
    originals = [response for response in finals if response.headers.get("Idempotent-Replayed") != "true"]
    result.note(
        "10 identical POST /api/v1/orders/ released at once (a barrier), one Idempotency-Key, through the gateway; "
        "a client answered 409 retries every 0.2s"
    )
    result.note(f"first answers {dict(first_statuses)}; final answers {dict(final_statuses)}, {len(replayed)} replays")
    other = post(dict(body, payment_method="tok_mastercard"))
    result.note(f"the same key with another body: {other.status_code}")
    orders = [order for order in run.orders_after(before).values() if order["user_id"] == customer.user_id]
    payments = run.payments_for(order["id"] for order in orders)
    charges = sum(len(found) for found in payments.values())
    result.figure("first answers", dict(first_statuses))
    result.figure("409 in flight", first_statuses.get(409, 0))
    result.figure("replays", len(replayed))
    result.figure("orders", len(orders))
    result.figure("charges", charges)
    result.check(set(first_statuses) <= {201, 202, 409}, "every first answer is the order (201/202) or 409 in flight")
    result.check(set(final_statuses) <= {201, 202}, "every client ends with the order")
    result.check(len(originals) == 1, "exactly one answer is not a replay")
    result.check(
        len({(response.status_code, response.content) for response in finals}) == 1,
        "all ten final answers identical (status and body)",
    )
    result.check(other.status_code == 422, "the same key with another body is refused with 422")
    result.check(len(orders) == 1, "one order")
    result.check(charges == 1, "one charge")


# --------------------------------------------------------------------------------------------------
# Scenario 5: the payment service refused, then slow, while orders are placed


def scenario_5(run: Run, result: Result, per_phase: int = 12) -> None:
    before = run.max_order_id()
    stock_before = run.stock_total()
    proxy = run.payments_proxy
    attempts: list[OrderAttempt] = []

    proxy.refuse()
    result.note(
        f"payment service unreachable (its proxy refuses connections); placing {per_phase} orders, every 4th "
        f"with a card that will be declined"
    )
    down = run.place_many(per_phase, threads=6, declined_every=4)
    attempts += down
    result.note(f"  answers while down: {dict(Counter(a.status for a in down))}, states {_states(down)}")

    proxy.restore()
    slow = PAYMENT_READ_TIMEOUT + 1.5
    proxy.slow(slow)
    result.note(
        f"payment service slow: every reply {slow:.1f}s late (order service read timeout {PAYMENT_READ_TIMEOUT}s)"
    )
    slowed = run.place_many(per_phase, threads=6, declined_every=4)
    attempts += slowed
    result.note(f"  answers while slow: {dict(Counter(a.status for a in slowed))}, states {_states(slowed)}")
    time.sleep(3)  # the sweeper's reconciliations meet the slow service too
    proxy.restore()
    recovered = time.monotonic()
    result.note("payment service back to normal")

    order_ids = {a.order_id for a in attempts if a.order_id is not None}
    settled = run.settle(order_ids, timeout=45) if order_ids else True
    settle_seconds = time.monotonic() - recovered
    orders = run.orders_after(before)
    orders = {order_id: order for order_id, order in orders.items() if order_id in order_ids}
    payments = run.payments_for(order_ids)
    states = Counter(order["status"] for order in orders.values())
    result.note(
        f"after recovery: {dict(states)} ({'all settled' if settled else 'NOT settled'} "
        f"{settle_seconds:.1f}s after recovery)"
    )

    double = [
        oid for oid, found in payments.items() if sum(p["status"] in ("succeeded", "refunded") for p in found) > 1
    ]
    payment_rows = [oid for oid, found in payments.items() if len(found) > 1]
    confirmed_without = [
        oid
        for oid, order in orders.items()
        if order["status"] == "confirmed"
        and not any(p["id"] == order["payment_id"] and p["status"] == "succeeded" for p in payments.get(oid, []))
    ]
    cancelled_charged = [
        oid
        for oid, order in orders.items()
        if order["status"] == "cancelled" and any(p["status"] == "succeeded" for p in payments.get(oid, []))
    ]
    late_charges = sum(1 for a in slowed if a.status == 202 and a.order_id in payments)
    slowest = max((a.seconds for a in attempts), default=0.0)
    result.figure("orders", len(order_ids))
    result.figure("202 answers", sum(a.status == 202 for a in attempts))
    result.figure("charged while the caller timed out", late_charges)
    result.figure("confirmed", states.get("confirmed", 0))
    result.figure("cancelled", states.get("cancelled", 0))
    result.figure("double charges", len(double))
    result.figure("confirmed without charge", len(confirmed_without))
    result.figure("settled after recovery (s)", round(settle_seconds, 1))
    result.figure("slowest answer (s)", round(slowest, 1))
    result.check(all(a.status in (201, 202) for a in attempts), "every POST answered 201/202 (never 5xx)")
    result.check(slowest < ORDER_DEADLINE, f"every POST answered within the deadline ({ORDER_DEADLINE:.0f}s)")
    result.check(all(a.status == 202 for a in down), "while down: 202 payment_pending")
    result.check(not double, f"0 double charges {double or ''}")
    result.check(not payment_rows, f"at most one payment row per order {payment_rows or ''}")
    result.check(not confirmed_without, f"0 confirmed orders without a charge {confirmed_without or ''}")
    result.check(not cancelled_charged, f"0 cancelled orders left charged {cancelled_charged or ''}")
    result.check(settled, "every order confirmed or cancelled within 45s of recovery")
    declined = {
        a.order_id for index, a in enumerate(down + slowed) if index % per_phase % 4 == 3 and a.order_id is not None
    }
    result.check(
        all(orders[oid]["status"] == ("cancelled" if oid in declined else "confirmed") for oid in orders),
        "paid orders confirmed, declined ones cancelled",
    )
    reservations = run.reservations(orders)
    wrong_stock = [
        oid
        for oid, order in orders.items()
        if reservations.get(oid) != ["released" if order["status"] == "cancelled" else "held"]
    ]
    stock_after = run.stock_total()
    result.figure("stock conserved", stock_after == stock_before)
    result.check(not wrong_stock, f"stock held for confirmed orders, released for cancelled ones {wrong_stock or ''}")
    result.check(stock_after == stock_before, f"stock conserved ({stock_before} units before, {stock_after} after)")
    confirmed = {oid for oid, order in orders.items() if order["status"] == "confirmed"}
    mailed = wait_until(lambda: set(run.mails()) >= confirmed, timeout=30, interval=0.5)
    mails = run.mails()
    result.figure("emails", sum(mails[oid] for oid in orders))
    result.check(
        mailed and all(mails[oid] == (1 if oid in confirmed else 0) for oid in orders),
        "the emails followed: one per confirmed order (within 30s), none for a cancelled one",
    )


def _statuses(attempts: list[OrderAttempt]) -> dict[int, int]:
    return dict(Counter(a.status for a in attempts))


def _states(attempts: list[OrderAttempt]) -> dict[str, int]:
    return dict(Counter(a.order_status or "-" for a in attempts))


# --------------------------------------------------------------------------------------------------
# Scenario 1: RabbitMQ cut for 10 s while orders are placed


def scenario_1(run: Run, result: Result, count: int) -> None:
    before = run.max_order_id()
    run.tap.drain()
    outage = 10.0
    cut_at = 1.5
    timeline: dict[str, float] = {}

    def outage_thread() -> None:
        time.sleep(cut_at)
        cut = sum(proxy.refuse() for proxy in run.broker_proxies.values())
        timeline["cut"] = time.monotonic()
        log(f"  RabbitMQ cut: every process's broker proxy refuses connections; {cut} open ones closed")
        time.sleep(outage)
        for proxy in run.broker_proxies.values():
            proxy.restore()
        timeline["restored"] = time.monotonic()
        log("  RabbitMQ back")

    samples: list[tuple[float, int]] = []  # (time, events pending in all outboxes)
    sampling = threading.Event()

    def sample_outboxes() -> None:
        while not sampling.is_set():
            with contextlib.suppress(Exception):  # a sample that fails is just missing
                samples.append((time.monotonic(), sum(run.pending_outbox().values())))
            sampling.wait(0.5)

    started = time.monotonic()
    sampler = threading.Thread(target=sample_outboxes, daemon=True)
    sampler.start()
    fault = threading.Thread(target=outage_thread, daemon=True)
    fault.start()
    attempts = run.place_many(count, threads=12)
    placed_for = time.monotonic() - started
    fault.join()
    accepted = [a for a in attempts if a.status in (201, 202)]
    during = sum(1 for a in accepted if timeline["cut"] <= a.finished_at <= timeline["restored"])
    result.note(
        f"placed {count} orders with 12 client threads in {placed_for:.1f}s, {during} of them answered while "
        f"RabbitMQ was cut ({cut_at:.1f}s to {cut_at + outage:.1f}s); answers {_statuses(attempts)}"
    )
    order_ids = {a.order_id for a in accepted if a.order_id is not None}

    settled = run.settle(order_ids, timeout=30) if order_ids else True
    drained = wait_until(lambda: not any(run.pending_outbox().values()), timeout=45, interval=0.5)
    sampling.set()
    sampler.join()
    # The drain can end between two samples (each queries three databases): one last sample, so that a
    # drained outbox always counts as cleared, at the latest when the wait above saw it.
    with contextlib.suppress(Exception):
        samples.append((time.monotonic(), sum(run.pending_outbox().values())))
    restored = timeline["restored"]
    backlog = max((pending for at, pending in samples if at <= restored + 0.5), default=0)
    # The backlog is gone once pending is back to what steady traffic keeps in flight (a few rows).
    cleared = next((at - restored for at, pending in samples if at > restored and pending <= 5), None)
    result.note(
        f"outbox backlog at recovery: {backlog} events; back to steady state "
        f"{'-' if cleared is None else f'{cleared:.1f}s'} after recovery; "
        f"{'all drained' if drained else 'NOT drained'} {time.monotonic() - started - placed_for:.1f}s after "
        f"the last order"
    )

    orders = run.orders_after(before)
    confirmed = {oid for oid, order in orders.items() if order["status"] == "confirmed"}
    events = run.confirmed_events(set(orders))

    def all_mailed() -> bool:
        return set(run.mails()) >= confirmed

    mailed = wait_until(all_mailed, timeout=60, interval=0.5)
    delivered = run.handled(events)
    email_rows = run.sent_email_rows(events)
    mails = run.mails()
    mine = {oid: mails[oid] for oid in orders}
    run.tap.drain()
    published = {event_id: run.tap.seen[event_id] for event_id in events}
    lost = sorted(confirmed - {oid for oid, n in mine.items() if n})
    duplicates = sorted(oid for oid, n in mine.items() if n > 1)

    result.figure("orders committed", len(orders))
    result.figure("accepted by the API", len(accepted))
    result.figure("confirmed", len(confirmed))
    result.figure("order.confirmed recorded", len(events))
    result.figure("order.confirmed published (incl. dup)", sum(published.values()))
    result.figure("order.confirmed delivered", len(delivered))
    result.figure("emails sent", sum(mine.values()))
    result.figure("lost", len(lost))
    result.figure("duplicate emails", len(duplicates))
    result.figure("answered during the cut", during)
    result.figure("outbox backlog", backlog)
    result.figure("backlog cleared after (s)", None if cleared is None else round(cleared, 1))
    result.check(len(accepted) == count, f"every order accepted by the API ({len(accepted)}/{count})")
    result.check(len(orders) == len(order_ids), "orders committed = orders the clients were told about")
    result.check(settled and len(confirmed) == len(orders), "every order confirmed")
    result.check(len(events) == len(confirmed), "one order.confirmed recorded per confirmed order")
    result.check(len(delivered) == len(events), "every order.confirmed delivered (user service's inbox)")
    result.check(sum(email_rows.values()) == len(events), "one SentEmail row per order.confirmed")
    result.check(mailed and not lost, f"0 lost emails {lost[:10] or ''}")
    result.check(not duplicates, f"0 duplicate emails {duplicates[:10] or ''}")
    result.check(during > 0, "orders were placed and answered while RabbitMQ was cut")
    result.check(backlog > 0, "events piled up in the outboxes while RabbitMQ was cut (the fault bit)")
    result.check(cleared is not None and cleared < 30, "the backlog cleared within 30s of recovery")
    result.check(drained, "every outbox drained to 0 pending")


# --------------------------------------------------------------------------------------------------
# Scenario 4: the relay killed between publish and mark-sent


def scenario_4(run: Run, result: Result, rounds: int = 2) -> None:
    name = "orders-relay"
    if not run.system.has_process(name):
        result.check(False, f"the launcher runs the order service's relay ({name})")
        return
    proxy = run.broker_proxies[name]  # the relay's own connection to RabbitMQ
    before = run.max_order_id()
    run.tap.drain()
    kills = 0
    caught_types: Counter[str] = Counter()
    for number in range(1, rounds + 1):
        attempt = _place_with_a_held_confirm(run, result, proxy, number=number)
        if attempt is None:
            continue
        time.sleep(0.3)  # the message is on the broker; give the tap a moment
        fresh = run.tap.drain()
        unsent = _unsent(run, fresh)
        run.system.kill(name)
        kills += 1
        proxy.cut()
        proxy.restore()
        run.system.restart(name)
        for event_id in unsent:
            caught_types[run.tap.types.get(event_id, "?")] += 1
        result.note(
            f"round {number}: order {attempt.order_id} placed; relay's publish confirmed by RabbitMQ but the "
            f"confirm held; relay SIGKILLed with {len(unsent)} published-but-unmarked row(s) "
            f"({', '.join(run.tap.types.get(e, '?') for e in unsent) or 'none'}); relay restarted"
        )
    gave_up_after = _lost_confirm_round(run, result, proxy, number=rounds + 1)
    order_ids = set(run.orders_after(before))
    drained = wait_until(lambda: run.pending_outbox()["orders"] == 0, timeout=60, interval=0.5)
    result.note(f"order outbox {'drained' if drained else 'NOT drained'} (claimed rows come back after their lease)")
    orders = run.orders_after(before)
    confirmed = {oid for oid, order in orders.items() if order["status"] == "confirmed"}
    mailed = wait_until(lambda: set(run.mails()) >= confirmed, timeout=30, interval=0.5)
    run.tap.drain()
    wanted = {str(order_id) for order_id in order_ids}
    scenario_events = {
        event_id
        for event_id, data in run.tap.data.items()
        if run.tap.types[event_id].startswith("order.") and str(data.get("order_id")) in wanted
    }
    duplicate_publishes = run.tap.duplicates(scenario_events)
    confirmed_events = run.confirmed_events(order_ids)
    email_rows = run.sent_email_rows(confirmed_events)
    mails = run.mails()
    receipts = task_receipts(run.system.log_text("users-worker"), set(confirmed_events))
    skipped = sum(max(n - 1, 0) for n in receipts.values())
    result.figure("relay kills", kills)
    result.figure("published-but-unmarked at kill", dict(caught_types))
    result.figure("duplicate publishes", duplicate_publishes)
    result.figure("deliveries absorbed by the inbox", skipped)
    result.figure("confirmed orders", len(confirmed))
    result.figure("emails", sum(mails[oid] for oid in order_ids))
    result.figure("duplicate emails", sum(1 for oid in order_ids if mails[oid] > 1))
    result.figure("relay past a lost confirm after (s)", gave_up_after)
    result.check(kills == rounds, f"the relay was killed between publish and mark-sent {rounds} times")
    result.check(
        gave_up_after is not None and gave_up_after < CONFIRM_TIMEOUT + 8,
        f"a confirm that never came held the relay about OUTBOX_CONFIRM_TIMEOUT ({CONFIRM_TIMEOUT:.0f}s), not for ever",
    )
    result.check(duplicate_publishes >= kills, f"duplicate publishes happened ({duplicate_publishes} >= {kills})")
    result.check(drained, "the order outbox drained after the kills")
    result.check(mailed and all(mails[oid] >= 1 for oid in confirmed), "every confirmed order got its email")
    result.check(all(mails[oid] <= 1 for oid in order_ids), "0 duplicate emails (files)")
    result.check(all(n == 1 for n in email_rows.values()), "0 duplicate SentEmail rows")


def _place_with_a_held_confirm(run: Run, result: Result, proxy: FaultProxy, *, number: int) -> OrderAttempt | None:
    """Place an order with the relay's proxy set to hold the confirm of its second publish (order.created
    goes first, then order.confirmed); the attempt once that confirm is held, None if none was caught."""
    # Quiet first: nothing due in the outbox, so the next publishes are this round's order's events.
    wait_until(lambda: _due_outbox(run) == 0, timeout=20, interval=0.3)
    since = proxy.acks_held
    proxy.hold_next_ack("down", skip=1)
    attempt = place_order(run.api, run.customers[number % len(run.customers)], run.products[number % 5])
    if proxy.wait_for_held_ack(20, since=since):
        return attempt
    result.note(f"round {number}: no publish caught within 20s (order {attempt.order_id} {attempt.status})")
    proxy.restore()
    return None


def _lost_confirm_round(run: Run, result: Result, proxy: FaultProxy, *, number: int) -> float | None:
    """A publisher confirm held for good while the relay keeps running: the relay must give the publish up
    after OUTBOX_CONFIRM_TIMEOUT and send the event again (on a fresh connection), not wait for ever.
    Returns the seconds from the held confirm until the row was marked sent (None: never)."""
    attempt = _place_with_a_held_confirm(run, result, proxy, number=number)
    if attempt is None:
        return None
    held_at = time.monotonic()
    time.sleep(0.3)  # the message is on the broker; give the tap a moment
    unmarked = _unsent(run, run.tap.drain())
    marked = wait_until(lambda: not _unsent(run, unmarked), timeout=CONFIRM_TIMEOUT + 20, interval=0.2)
    after = time.monotonic() - held_at if marked else None
    proxy.cut()  # the held connection, which the relay has left by now
    proxy.restore()
    result.note(
        f"round {number}: order {attempt.order_id} placed; the confirm of {len(unmarked)} publish(es) held for good, "
        f"the relay left running: row(s) marked sent {'-' if after is None else f'{after:.1f}s'} later"
    )
    return None if after is None else round(after, 1)


def _due_outbox(run: Run) -> int:
    return int(
        run.infra.scalar(
            "orders", "SELECT COUNT(*) FROM messaging_outboxevent WHERE sent_at IS NULL AND next_attempt_at <= now()"
        )
    )


def _unsent(run: Run, event_ids: list[str]) -> list[str]:
    if not event_ids:
        return []
    rows = run.infra.query(
        "orders",
        "SELECT id::text FROM messaging_outboxevent WHERE sent_at IS NULL AND id = ANY(%s::uuid[])",
        (event_ids,),
    )
    return [row[0] for row in rows]


# --------------------------------------------------------------------------------------------------
# Scenario 2: the consumer worker killed mid-task


def confirmed_event_data(customer: Customer, order_id: int) -> dict[str, Any]:
    """The data of an order.confirmed event as the order service writes it (for a made-up order id)."""
    return {
        "order_id": order_id,
        "user_id": customer.user_id,
        "total_amount": "12.50",
        "currency": "USD",
        "status": "confirmed",
        "items": [
            {
                "product_id": 1,
                "sku": "MUG-001",
                "name": "Ceramic mug",
                "quantity": 1,
                "unit_price": "12.50",
                "line_total": "12.50",
            }
        ],
    }


def scenario_2(run: Run, result: Result, per_round: int = 20, kills: int = 3) -> None:
    name = "users-worker"
    proxy = run.broker_proxies[name]
    base = 900_000 + int(time.time()) % 10_000 * 10  # made-up order ids no real order has
    events: dict[str, int] = {}

    def publish(count: int) -> None:
        for _ in range(count):
            order_id = base + len(events)
            customer = run.customers[len(events) % len(run.customers)]
            events[run.publisher.publish("order.confirmed", confirmed_event_data(customer, order_id))] = order_id

    def emailed() -> int:
        mails = run.mails()
        return sum(1 for order_id in events.values() if mails[order_id])

    killed = 0
    for number in range(1, kills + 1):
        # The previous round's events (and the redeliveries of the interrupted ones, skipped by the inbox)
        # are done first, so that every ack from here on is that of a new event, whose task had an effect.
        wait_until(lambda: emailed() == len(events), timeout=30, interval=0.2)
        time.sleep(0.5)
        since = proxy.acks_held
        # The worker acknowledges after the task (acks_late): hold its third ack from now, so that the kill
        # lands after that task's email was sent and recorded but before RabbitMQ knows; the other pool
        # process is likely mid-task. Armed before the round is published: the worker handles twenty events
        # in about a second, faster than this harness could see emails appear and then arm.
        proxy.hold_next_ack("up", skip=2)
        publish(per_round)
        if not proxy.wait_for_held_ack(30, since=since):
            result.note(f"round {number}: no acknowledgement caught within 30s")
            proxy.restore()
            continue
        time.sleep(0.1)
        run.system.kill(name)
        killed += 1
        proxy.cut()
        proxy.restore()
        run.system.restart(name)
        sent = emailed()
        result.note(
            f"round {number}: {per_round} more events published; an ack held back, the worker SIGKILLed "
            f"(its process group) at {sent}/{len(events)} emails sent, then restarted"
        )
    publish(per_round)
    result.note(f"{len(events)} order.confirmed events (made-up orders) published straight to the events exchange")
    mailed = wait_until(lambda: all(run.mails()[oid] for oid in events.values()), timeout=60, interval=0.5)
    time.sleep(1)  # a late duplicate, if any, would show now
    mails = run.mails()
    email_rows = run.sent_email_rows(events)
    receipts = task_receipts(run.system.log_text(name), set(events))
    redeliveries = sum(max(n - 1, 0) for n in receipts.values())
    lost = [oid for oid in events.values() if not mails[oid]]
    duplicates = [oid for oid in events.values() if mails[oid] > 1]
    result.figure("events", len(events))
    result.figure("worker kills", killed)
    result.figure("redeliveries", redeliveries)
    result.figure("most deliveries of one event", max(receipts.values(), default=0))
    result.figure("emails", sum(mails[oid] for oid in events.values()))
    result.figure("lost", len(lost))
    result.figure("duplicates", len(duplicates))
    result.check(killed == kills, f"the worker was killed mid-task {kills} times")
    result.check(redeliveries >= killed, f"the interrupted tasks were delivered again ({redeliveries} >= {killed})")
    result.check(mailed and not lost, f"0 lost {lost[:10] or ''}")
    result.check(not duplicates and all(n == 1 for n in email_rows.values()), f"0 duplicates {duplicates[:10] or ''}")
    # Each kill gives an event back once at most: far from the delivery limit, so RabbitMQ dead-lettered none.
    dead = [letter for letter in dead_letters(run.publisher_url, "users.events") if letter["event"].get("id") in events]
    result.check(
        max(receipts.values(), default=0) <= DELIVERY_LIMIT and not dead,
        f"no event delivered more than EVENT_DELIVERY_LIMIT={DELIVERY_LIMIT} times, none dead-lettered ({len(dead)})",
    )


# --------------------------------------------------------------------------------------------------
# Scenario 3: a poison event


def scenario_3(run: Run, result: Result, others: int = 20) -> None:
    queue = "users.events"
    poison = run.publisher.publish("order.confirmed", {"order_id": "not a number", "note": "no user_id: a KeyError"})
    result.note(f"published a poison order.confirmed {poison} (no user_id: its handler raises every time)")
    base = 950_000 + int(time.time()) % 10_000 * 10
    good: dict[str, int] = {}
    for index in range(others):
        data = confirmed_event_data(run.customers[index % len(run.customers)], base + index)
        good[run.publisher.publish("order.confirmed", data)] = base + index
    result.note(f"then {others} good events behind it")

    def dead() -> list[dict[str, Any]]:
        return [letter for letter in dead_letters(run.publisher_url, queue) if letter["event"].get("id") == poison]

    flowed = wait_until(lambda: all(run.mails()[oid] for oid in good.values()), timeout=30, interval=0.5)
    dead_lettered = wait_until(lambda: bool(dead()), timeout=40, interval=0.5)
    time.sleep(3)  # anything that would still try it again would have done so by now
    letters = dead()
    attempts = task_receipts(run.system.log_text("users-worker"), {poison})[poison]
    result.note(f"the worker took it {attempts} times; {len(letters)} dead letter(s) in {queue}.dead")
    result.figure("attempts", attempts)
    result.figure("dead letters", len(letters))
    result.figure("attempts recorded", letters[0].get("attempts") if letters else None)
    result.figure("other events emailed", sum(1 for oid in good.values() if run.mails()[oid]))
    result.check(flowed, f"the {others} other events kept flowing (all emailed)")
    result.check(dead_lettered and len(letters) == 1, "exactly one dead letter")
    result.check(attempts == MAX_ATTEMPTS, f"exactly EVENT_MAX_ATTEMPTS={MAX_ATTEMPTS} attempts (worker log)")
    result.check(bool(letters) and letters[0].get("attempts") == MAX_ATTEMPTS, "the dead letter records N attempts")


# --------------------------------------------------------------------------------------------------
# Main


# --------------------------------------------------------------------------------------------------
# Scenario 7: the saga's property test, at length

PROPERTY_EXAMPLES = 150  # the suite runs 15


def scenario_7(run: Run, result: Result) -> None:
    """The order service's hypothesis state machine (the real saga, catalog and database; the payment
    service's network edge stood in for, with its failures) run with PROPERTY_EXAMPLES examples against the
    order service's PostgreSQL test database. It needs none of the running system."""
    report = run.system.var_dir / "saga-properties.json"
    env = {**os.environ, "SAGA_PROPERTY_EXAMPLES": str(PROPERTY_EXAMPLES), "SAGA_PROPERTY_REPORT": str(report)}
    started = time.monotonic()
    test = "orders/tests/test_saga_properties.py"
    completed = subprocess.run(  # noqa: S603 (our own command line)
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=ROOT / "order_project",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    counts: dict[str, int] = json.loads(report.read_text()) if report.exists() else {}
    result.note(
        f"ran {test} with {counts.get('examples', 0)} examples of up to 15 steps in {time.monotonic() - started:.0f}s"
    )
    for name in (
        "orders placed",
        "retries with a key (same order back)",
        "key reused with another body (422)",
        "redelivered steps",
        "background sweeps",
        "cancellations",
        "charge calls (retries included)",
        "charges",
        "refunds",
        "confirmed",
        "cancelled",
        "double charges",
    ):
        result.figure(name, counts.get(name, 0))
    if completed.returncode != 0:
        print(completed.stdout[-6000:], completed.stderr[-2000:], sep="\n")
    result.check(completed.returncode == 0, "every invariant held in every example (pytest passed)")
    result.check(counts.get("examples", 0) >= PROPERTY_EXAMPLES, f"at least {PROPERTY_EXAMPLES} examples ran")
    result.check(counts.get("double charges", 1) == 0, "0 double charges")


# --------------------------------------------------------------------------------------------------
# Scenario 8: the gateway under slow-client attack


@dataclass
class Attacker:
    """One attacking connection: ``slow_head`` sends a request head a byte at a time, ``slow_body`` a whole
    head and then its body a byte at a time, ``slow_reader`` asks for large answers and reads nothing."""

    kind: str
    sock: socket.socket
    opened: float
    received: bytearray = field(default_factory=bytearray)
    closed_after: float | None = None  # seconds from opening until the gateway closed it

    @property
    def status(self) -> int | None:
        head = bytes(self.received[:12])
        return int(head[9:12]) if head.startswith(b"HTTP/1.1 ") and head[9:12].isdigit() else None


def _attacker(kind: str, address: tuple[str, int], first_bytes: bytes) -> Attacker:
    sock = socket.create_connection(address, timeout=5)
    if kind == "slow_reader":
        # A small window, so that the answers fill the buffers on the way; not so small that reading what
        # got through takes long.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(first_bytes)
    sock.setblocking(False)
    return Attacker(kind, sock, time.monotonic())


def _trickle_and_watch(attackers: list[Attacker], until: float) -> None:
    """Send each slow head and body one more byte every half second, and note what the gateway answers and
    when it closes each; slow readers are left unread."""
    selector = selectors.DefaultSelector()
    for attacker in attackers:
        if attacker.kind != "slow_reader":
            selector.register(attacker.sock, selectors.EVENT_READ, attacker)
    next_byte = time.monotonic()
    while selector.get_map() and time.monotonic() < until:
        for key, _ in selector.select(timeout=0.1):
            attacker = key.data
            try:
                data = attacker.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            attacker.received += data
            if not data:
                attacker.closed_after = time.monotonic() - attacker.opened
                selector.unregister(attacker.sock)
        if time.monotonic() >= next_byte:
            next_byte += 0.5
            for key in list(selector.get_map().values()):
                with contextlib.suppress(OSError):  # closed by the gateway: noted when its end is read
                    key.data.sock.send(b"a")
    selector.close()


def scenario_8(run: Run, result: Result) -> None:
    customer = run.customers[0]
    attacker_account = run.api.sign_up("attacker")
    address = ("127.0.0.1", run.system.ports["gateway"])
    host = f"Host: 127.0.0.1:{address[1]}\r\n"
    large = "/static/gateway/drf_spectacular_sidecar/redoc/bundles/redoc.standalone.js.map"
    large_size = len(run.api.get(large).content)
    before = run.max_order_id()
    threads = run.system.web_workers * 8  # x GATEWAY_DJANGO_THREADS (its default): what Django's pages run on
    slow_body = "POST {} HTTP/1.1\r\n" + host + "Content-Type: {}\r\nContent-Length: 10000\r\n{}\r\n{{"
    attackers = [
        *(_attacker("slow_head", address, b"GET /api/v1/products/ HTTP/1.1\r\n" + host.encode()) for _ in range(100)),
        # A service's admin pages are forwarded from Django's threads; orders on the event loop.
        *(
            _attacker("slow_body", address, slow_body.format("/admin/orders/login/", "text/plain", "").encode())
            for _ in range(threads + 14)
        ),
        *(
            _attacker(
                "slow_body",
                address,
                slow_body.format(
                    "/api/v1/orders/", "application/json", f"Authorization: Bearer {attacker_account.token}\r\n"
                ).encode(),
            )
            for _ in range(30)
        ),
        # More than the gateway's threads for static files (2 x 4), which a stalled reader holds for up to
        # GATEWAY_SEND_TIMEOUT; the pages' and health checks' own are not among them.
        *(_attacker("slow_reader", address, f"GET {large} HTTP/1.1\r\n{host}\r\n".encode() * 4) for _ in range(12)),
    ]
    kinds = Counter(attacker.kind for attacker in attackers)
    result.note(
        f"{len(attackers)} attacking connections: {dict(kinds)} (readers each ask 4 times for a {large_size} B file); "
        f"gateway deadlines {ATTACK_DEADLINE:.0f} s; Django's pages on {threads} threads"
    )

    attack_started = time.monotonic()
    window = 2 * ATTACK_DEADLINE + 1
    watcher = threading.Thread(target=_trickle_and_watch, args=(attackers, time.monotonic() + window + 2))
    watcher.start()
    latencies: dict[str, list[float]] = {}
    failures: list[str] = []
    session = requests.Session()
    session.trust_env = False
    bearer = {"Authorization": f"Bearer {customer.token}"}
    stop_at = time.monotonic() + window
    while time.monotonic() < stop_at:
        for path in ("/api/v1/orders/", "/api/v1/me/overview", "/health/ready/"):
            sent = time.monotonic()
            try:
                status = session.get(run.api.base_url + path, headers=bearer, timeout=10).status_code
            except requests.RequestException as error:
                status, error_text = 0, type(error).__name__
            else:
                error_text = str(status)
            latencies.setdefault(path, []).append(time.monotonic() - sent)
            if status != 200:
                failures.append(f"{path}: {error_text}")
        time.sleep(0.05)
    watcher.join()

    # A reader's requests may each wait for a static-file thread before their answer stalls; reading what got
    # through before the gateway cut it off would un-stall it.
    time.sleep(max(0.0, attack_started + 4 * ATTACK_DEADLINE + 1 - time.monotonic()))
    reader_bytes = []
    for attacker in attackers:
        if attacker.kind == "slow_reader":
            attacker.sock.setblocking(True)
            attacker.sock.settimeout(5)
            received = 0
            with contextlib.suppress(OSError):
                while chunk := attacker.sock.recv(65536):
                    received += len(chunk)
            reader_bytes.append(received)
        attacker.sock.close()

    answered = sum(len(times) for times in latencies.values())
    slowest = {path: max(times) for path, times in latencies.items()}
    for path, times in latencies.items():
        ordered = sorted(times)
        result.note(
            f"{path}: {len(times)} requests, p50 {ordered[len(ordered) // 2] * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms"
        )
    heads = [a for a in attackers if a.kind == "slow_head"]
    bodies = [a for a in attackers if a.kind == "slow_body"]
    body_statuses = Counter(attacker.status for attacker in bodies)
    cut_after = [a.closed_after for a in heads + bodies if a.closed_after is not None]
    new_orders = [o for o in run.orders_after(before).values() if o["user_id"] == attacker_account.user_id]
    result.note(f"slow bodies answered {dict(body_statuses)}; readers got {reader_bytes} of {4 * large_size} B each")
    result.figure("customer requests", answered)
    result.figure("customer failures", len(failures))
    result.figure("slowest customer ms", round(max(slowest.values()) * 1000))
    result.figure("attackers cut off", len(cut_after) + sum(1 for n in reader_bytes if n < 4 * large_size))
    result.check(not failures, f"every customer request answered 200 during the attack {failures[:5]}")
    result.check(
        max(slowest.values()) < ATTACK_DEADLINE,
        f"no customer request waited for an attacker's deadline (each answered in under {ATTACK_DEADLINE:.0f} s)",
    )
    result.check(
        all(a.closed_after is not None and not a.received for a in heads),
        "every slow head closed unanswered",
    )
    result.check(body_statuses == Counter({408: len(bodies)}), "every slow body answered 408")
    result.check(
        all(a.closed_after is not None and a.closed_after < ATTACK_DEADLINE + 2 for a in heads + bodies),
        f"every slow head and body cut off within {ATTACK_DEADLINE + 2:.0f} s",
    )
    result.check(all(n < 4 * large_size for n in reader_bytes), "every reader cut off before its answers were sent")
    result.check(not new_orders, "no order of the attacker reached the order service")


SCENARIOS: dict[int, tuple[str, Callable[..., None]]] = {
    6: ("10 concurrent requests, one Idempotency-Key", scenario_6),
    5: ("payment service down, then slow", scenario_5),
    1: ("RabbitMQ cut for 10 s during orders", scenario_1),
    4: ("relay killed between publish and mark-sent", scenario_4),
    2: ("consumer worker SIGKILLed mid-task", scenario_2),
    3: ("a poison event", scenario_3),
    7: ("saga property test, at length", scenario_7),
    8: ("the gateway under slow-client attack", scenario_8),
}


def print_summary(results: list[Result]) -> None:
    print("\n" + "=" * 100)
    print(f"{'#':<3}{'scenario':<46}{'result':<8}{'time':>7}  figures")
    print("-" * 100)
    for result in results:
        figures = ", ".join(f"{name}={value}" for name, value in result.figures.items())
        verdict = "PASS" if result.passed else "FAIL"
        print(f"{result.number:<3}{result.title:<46}{verdict:<8}{result.seconds:>6.0f}s  {figures}")
        for failure in result.failures:
            print(f"{'':<11}failed: {failure}")
    print("=" * 100)
    failed = [r.number for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed" + (f" (scenarios {failed})" if failed else ""))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="8,6,5,1,4,2,3,7", help="scenarios to run, in this order (default: all)")
    parser.add_argument("--orders", type=int, default=300, help="orders placed in scenario 1")
    parser.add_argument("--customers", type=int, default=4, help="customers signed up (passwords are slow)")
    parser.add_argument("--time-limit", type=float, default=540, help="seconds before the watchdog stops the run")
    parser.add_argument("--keep", action="store_true", help="keep the run's var/ folder (logs, emails)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    chosen = [int(part) for part in args.only.split(",") if part.strip()]
    unknown = [number for number in chosen if number not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios {unknown}; choose from {sorted(SCENARIOS)}", file=sys.stderr)
        return 2

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    watchdog = threading.Timer(args.time_limit, _thread.interrupt_main)
    watchdog.daemon = True
    watchdog.start()

    var_dir = Path(tempfile.mkdtemp(prefix="shop-faults-"))
    started = time.monotonic()
    run: Run | None = None
    results: list[Result] = []
    exit_code = 1
    try:
        run = build(args, var_dir)
        launch(run, args)
        for number in chosen:
            results.append(run_scenario(run, number, args))
        print_summary(results)
        exit_code = 0 if results and all(result.passed for result in results) else 1
    except KeyboardInterrupt:
        log(f"interrupted after {time.monotonic() - started:.0f}s (time limit {args.time_limit:.0f}s or Ctrl-C)")
        if results:
            print_summary(results)
    except (Failure, manage_all.LaunchError) as error:
        log(f"could not run: {error}")
    finally:
        watchdog.cancel()
        if run is not None:
            log("stopping everything this run started")
            stop(run)
        if exit_code == 0 and not args.keep:
            shutil.rmtree(var_dir, ignore_errors=True)
        else:
            log(f"logs and emails kept in {var_dir}")
        log(f"done in {time.monotonic() - started:.0f}s")
    return exit_code


def run_scenario(run: Run, number: int, args: argparse.Namespace) -> Result:
    title, scenario = SCENARIOS[number]
    result = Result(number=number, title=title)
    log(f"scenario {number}: {title}")
    begun = time.monotonic()
    try:
        if number == 1:
            scenario(run, result, args.orders)
        else:
            scenario(run, result)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # a harness or system error ends this scenario, not the run
        traceback.print_exc()
        result.check(False, f"the scenario ran to its end ({type(error).__name__}: {error})")
    finally:
        for proxy in run.proxies:
            proxy.restore()
        for process in list(run.system.processes):  # a scenario that died mid-kill leaves nothing down
            if process.popen.poll() is not None and process.name not in manage_all.SERVICES_BY_NAME:
                log(f"  {process.name} is not running (exit {process.popen.returncode}); restarting it")
                run.system.restart(process.name)
    result.seconds = time.monotonic() - begun
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
