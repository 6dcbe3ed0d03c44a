from typing import Any

from celery import current_app
from django.core.management.base import BaseCommand

from common.events import EVENTS_EXCHANGE, dead_letter_queue


class Command(BaseCommand):
    help = (
        "Declare the events exchange and this service's queues with their bindings. Run before the first "
        "start, like migrate: events published before the worker first runs are then kept, not dropped. "
        "Each queue gets its dead-letter queue (<queue>.dead) too."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with current_app.connection_for_write() as connection:
            channel = connection.default_channel
            EVENTS_EXCHANGE(channel).declare()
            for queue in current_app.conf.task_queues or ():
                queue(channel).declare()
                self.stdout.write(f"declared queue {queue.name}")
                dead = dead_letter_queue(queue.name)
                dead(channel).declare()
                self.stdout.write(f"declared queue {dead.name}")
