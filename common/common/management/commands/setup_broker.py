from typing import Any

from amqp.exceptions import PreconditionFailed
from celery import current_app
from django.core.management.base import BaseCommand, CommandError

from common.events import EVENTS_EXCHANGE, dead_letter_queue


class Command(BaseCommand):
    help = (
        "Declare the events exchange and this service's queues with their bindings. Run before the first "
        "start, like migrate: events published before the worker first runs are then kept, not dropped. "
        "Each queue gets its dead-letter queue (<queue>.dead) too."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with current_app.connection_for_write() as connection:
            EVENTS_EXCHANGE(connection.default_channel).declare()
            for queue in current_app.conf.task_queues or ():
                # The dead-letter queue first: a quorum queue dead-letters into it.
                dead = dead_letter_queue(queue.name)
                dead(connection.default_channel).declare()
                self.stdout.write(f"declared queue {dead.name}")
                try:
                    queue(connection.default_channel).declare()
                except PreconditionFailed as exc:
                    # The queue exists with other arguments (a classic queue from before the delivery
                    # limit, or another EVENT_DELIVERY_LIMIT): RabbitMQ never changes a queue's arguments.
                    raise CommandError(
                        f"queue {queue.name} exists with other arguments than {queue.queue_arguments}: {exc}. "
                        f"Stop its worker, let it drain (or move its messages elsewhere), delete it "
                        f"(rabbitmqctl delete_queue {queue.name}) and run setup_broker again; see the README, "
                        f'"Events".'
                    ) from exc
                self.stdout.write(f"declared queue {queue.name}")
