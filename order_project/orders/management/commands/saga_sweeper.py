"""``manage.py saga_sweeper``: the order saga's background (see orders.saga), run by the launcher beside the
order service. A plain loop rather than celery beat: it needs only the database, so orders are settled
even while the broker is down, and no periodic message can pile up or be lost."""

import logging
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError, close_old_connections
from opentelemetry import trace

from common.tracing import configure_tracing
from orders import saga

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Advance every order whose next saga step is due (payment_pending, refund_pending, steps of a crashed "
        "process), every ORDER_SAGA_SWEEP_INTERVAL seconds, until SIGTERM/SIGINT."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="sweep once, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            self.stdout.write(f"saga_sweeper: looked at {saga.sweep()} order(s).")
            return
        configure_tracing(settings.SERVICE_NAME)  # the long-running loop only, not --once
        tracer = trace.get_tracer(__name__)
        stop = threading.Event()

        def request_stop(signum: int, frame: Any) -> None:
            stop.set()  # the current sweep finishes its step; every step is safe to cut short anyway

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        logger.info("order saga sweeper started")
        while not stop.is_set():
            try:
                # One trace per sweep: its payment calls and database work, under one root.
                with tracer.start_as_current_span("saga sweep"):
                    saga.sweep()
            except DatabaseError:
                # The database briefly unreachable: drop the broken connection and try again next round.
                logger.exception("order saga sweep failed; retrying")
                close_old_connections()
            stop.wait(settings.ORDER_SAGA_SWEEP_INTERVAL)
        logger.info("order saga sweeper stopped")
