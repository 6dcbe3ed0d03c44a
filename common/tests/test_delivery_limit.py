"""A message whose handler kills its worker ends as a dead letter on RabbitMQ, not in an endless crash loop.

A real worker process (prefork, as in production) consumes a quorum queue declared by ``setup_broker`` with
``x-delivery-limit``; its handler for one event type calls ``os._exit``. Each delivery kills the pool
process, Celery gives the message back (``reject_on_worker_lost``), and RabbitMQ counts: past the limit it
dead-letters the message to ``<queue>.dead``, where ``dead_letters list`` shows it, and the events behind it
are handled. Only with a RabbitMQ (BROKER_URL=amqp://...): kombu's filesystem broker counts no deliveries.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection, Queue

from common.events import EVENTS_EXCHANGE, HANDLE_TASK_NAME, Event, dead_letter_queue_name

BROKER_URL = os.environ.get("BROKER_URL", "")
DELIVERY_LIMIT = 2
WAIT_SECONDS = 90.0
COMMON_DIR = Path(__file__).resolve().parent.parent
MANAGE = (
    "import sys, django, tests.celery_app; from django.core.management import execute_from_command_line; "
    "django.setup(); execute_from_command_line(['manage.py', *sys.argv[1:]])"
)

pytestmark = pytest.mark.skipif(not BROKER_URL.startswith("amqp://"), reason="BROKER_URL does not name a RabbitMQ")


class CrashTest:
    def __init__(self, tmp_path: Path) -> None:
        self.service = f"crashtest{uuid.uuid4().hex[:12]}"
        self.queue = f"{self.service}.events"
        self.database = tmp_path / "db.sqlite3"
        self.deliveries = tmp_path / "deliveries.txt"
        self.worker_log = tmp_path / "worker.log"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.crash_worker_settings",
            "CRASH_TEST_SERVICE": self.service,
            "CRASH_TEST_DATABASE": str(self.database),
            "CRASH_TEST_DELIVERIES": str(self.deliveries),
            "CRASH_TEST_DELIVERY_LIMIT": str(DELIVERY_LIMIT),
        }
        # Not the current app: the other tests publish through theirs (tests.celery_app).
        self.publisher = Celery("crash-test-publisher", broker=BROKER_URL, set_as_current=False)

    def manage(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(  # noqa: S603  our own interpreter and arguments
            # As a service's manage.py does: its Celery app loaded (the commands read its queues), then Django.
            [sys.executable, "-c", MANAGE, *args],
            cwd=COMMON_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode == 0) == ok, done.stderr
        return done

    def start_worker(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-Q", self.queue]
        command += ["--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with self.worker_log.open("wb") as log:
            return subprocess.Popen(  # noqa: S603  our own interpreter and arguments
                command, cwd=COMMON_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    def publish(self, kind: str, data: dict[str, object]) -> Event:
        event = Event(type=f"thing.{kind}.{self.service}", data=data, source="test")
        self.publisher.send_task(
            HANDLE_TASK_NAME,
            kwargs={"event": asdict(event)},
            task_id=event.id,
            exchange=EVENTS_EXCHANGE,
            routing_key=event.type,
            declare=[EVENTS_EXCHANGE],  # not Celery's default queue
            delivery_mode=2,
        )
        return event

    def handled(self) -> set[str]:
        with sqlite3.connect(self.database) as db:
            return {row[0].replace("-", "") for row in db.execute("SELECT event_id FROM eventstore_inboxevent")}

    def delivered(self) -> list[str]:
        return self.deliveries.read_text().split() if self.deliveries.exists() else []

    def delete_queues(self) -> None:
        with Connection(BROKER_URL) as connection:
            for name in (self.queue, dead_letter_queue_name(self.queue)):
                Queue(name, no_declare=True)(connection.default_channel).delete()


@pytest.fixture
def crash_test(tmp_path: Path) -> Iterator[CrashTest]:
    test = CrashTest(tmp_path)
    try:
        yield test
    finally:
        test.delete_queues()
        test.publisher.close()


def wait_until(condition: object, what: str, log: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_SECONDS}s: {what}\n--- worker log ---\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


def test_event_that_kills_its_worker_is_dead_lettered_by_rabbitmq_after_the_delivery_limit(
    crash_test: CrashTest,
) -> None:
    # Given this service's tables, and its queues declared as setup_broker declares them: a quorum queue
    crash_test.manage("migrate", "--run-syncdb", "--verbosity", "0")
    assert f"declared queue {crash_test.queue}" in crash_test.manage("setup_broker").stdout

    # When an event whose handler kills the worker is published, then good events behind it
    crash = crash_test.publish("crashes", {"n": 0})
    good = [crash_test.publish("happened", {"n": n}) for n in range(1, 4)]
    worker = crash_test.start_worker()
    try:
        wait_until(
            lambda: {event.id.replace("-", "") for event in good} <= crash_test.handled(),
            "the good events handled after the crashing one",
            crash_test.worker_log,
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

    # Then RabbitMQ delivered the crashing event once plus DELIVERY_LIMIT times again, and no more
    assert crash_test.delivered() == [crash.id] * (DELIVERY_LIMIT + 1)
    # and dead-lettered it, once: dead_letters list shows it with why
    lines = crash_test.manage("dead_letters", "list", "--json").stdout.splitlines()
    letters = [json.loads(line) for line in lines if line.startswith("{")]
    assert [letter["event"]["id"] for letter in letters] == [crash.id]
    [letter] = letters
    assert letter["queue"] == crash_test.queue
    assert letter["attempts"] == 1
    assert "dead-lettered by RabbitMQ" in letter["error"]
    assert "x-delivery-limit" in letter["error"]
    assert crash.id.replace("-", "") not in crash_test.handled()


def test_event_whose_handler_overruns_the_hard_time_limit_is_dead_lettered_after_the_delivery_limit(
    crash_test: CrashTest,
) -> None:
    # Given this service's queues as setup_broker declares them, and a worker with a 3 s hard time limit
    crash_test.manage("migrate", "--run-syncdb", "--verbosity", "0")
    crash_test.manage("setup_broker")

    # When an event whose handler hangs is published, then a good event behind it
    hung = crash_test.publish("hangs", {"n": 0})
    good = crash_test.publish("happened", {"n": 1})
    worker = crash_test.start_worker()
    try:
        wait_until(
            lambda: good.id.replace("-", "") in crash_test.handled(), "the good event handled", crash_test.worker_log
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

    # Then each timeout gave the message back (it was not acknowledged into nothing), RabbitMQ counted the
    # deliveries, and past the limit dead-lettered it once
    assert "Hard time limit (3s) exceeded" in crash_test.worker_log.read_text()
    assert crash_test.delivered() == [hung.id] * (DELIVERY_LIMIT + 1)
    lines = crash_test.manage("dead_letters", "list", "--json").stdout.splitlines()
    letters = [json.loads(line) for line in lines if line.startswith("{")]
    assert [letter["event"]["id"] for letter in letters] == [hung.id]


def test_setup_broker_refuses_an_existing_classic_queue_of_the_same_name_and_says_what_to_do(
    crash_test: CrashTest,
) -> None:
    # Given the service's queue as deployed before the delivery limit: a classic queue, holding a message
    with Connection(BROKER_URL) as connection:
        classic = Queue(crash_test.queue, exchange="", routing_key=crash_test.queue, durable=True)
        classic(connection.default_channel).declare()
        connection.Producer().publish({"waiting": True}, exchange="", routing_key=crash_test.queue, serializer="json")

    # When setup_broker declares it as a quorum queue
    done = crash_test.manage("setup_broker", ok=False)

    # Then it fails with RabbitMQ's reason and the way out, and the queue and its message are untouched
    assert "PRECONDITION_FAILED" in done.stderr
    assert f"rabbitmqctl delete_queue {crash_test.queue}" in done.stderr
    with Connection(BROKER_URL) as connection:
        _name, messages, _consumers = connection.default_channel.queue_declare(crash_test.queue, passive=True)
    assert messages == 1
