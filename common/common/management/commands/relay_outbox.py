"""``manage.py relay_outbox``: send this service's outbox to the broker until stopped (see common.outbox)."""

import logging
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from common.outbox import relay_pending, run_relay
from common.tracing import configure_tracing

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Publish the events this service recorded in its outbox, with confirms; runs until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="send what is due now, then exit")
        parser.add_argument("--interval", type=float, default=None, help="seconds between polls when idle")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            self.stdout.write(f"sent {relay_pending()} events")
            return
        configure_tracing(settings.SERVICE_NAME)  # the long-running relay only, not --once
        stop = threading.Event()

        def request_stop(signum: int, frame: Any) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        logger.info("outbox relay started")
        run_relay(stop=stop, poll_interval=options["interval"])
        logger.info("outbox relay stopped")
