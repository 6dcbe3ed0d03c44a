"""Handlers that kill or hang the worker process handling them, for the delivery-limit tests
(test_delivery_limit)."""

from __future__ import annotations

import os
import time

from common.events import Event


def _record_delivery(event: Event) -> None:
    # One line per delivery, written before dying: the test counts how often RabbitMQ delivered the event.
    with open(os.environ["CRASH_TEST_DELIVERIES"], "a") as deliveries:
        deliveries.write(event.id + "\n")


def exit_worker(event: Event) -> None:
    _record_delivery(event)
    os._exit(1)  # no exception, no cleanup, no ack: what a segfault or the OOM killer does


def hang(event: Event) -> None:
    _record_delivery(event)
    time.sleep(600)  # far past the hard time limit: the pool process is killed mid-handler
