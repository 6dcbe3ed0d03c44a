"""A handler that kills the worker process handling it, for the delivery-limit test (test_delivery_limit)."""

from __future__ import annotations

import os

from common.events import Event


def exit_worker(event: Event) -> None:
    # One line per delivery, written before dying: the test counts how often RabbitMQ delivered the event.
    with open(os.environ["CRASH_TEST_DELIVERIES"], "a") as deliveries:
        deliveries.write(event.id + "\n")
    os._exit(1)  # no exception, no cleanup, no ack: what a segfault or the OOM killer does
