"""``manage.py dead_letters list|redrive [--id EVENT_ID ...] [--queue QUEUE]`` (see common.dead_letters)."""

import json
from typing import Any

from celery import current_app
from django.core.management.base import BaseCommand, CommandError, CommandParser

from common.dead_letters import dead_letter_list, dead_letter_redrive


class Command(BaseCommand):
    help = (
        "List the events this service's consumer queues gave up on, or send them back to their queue "
        "(all, or those named with --id) after the cause has been fixed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=("list", "redrive"))
        parser.add_argument("--id", dest="ids", action="append", metavar="EVENT_ID", help="only this event")
        parser.add_argument("--queue", help="one consumer queue (default: every queue of this service)")
        parser.add_argument("--json", action="store_true", help="one JSON document per line")

    def handle(self, *args: Any, **options: Any) -> None:
        queues = [queue.name for queue in current_app.conf.task_queues or ()]
        if options["queue"]:
            if options["queue"] not in queues:
                raise CommandError(f"unknown queue {options['queue']!r}; this service consumes {queues}")
            queues = [options["queue"]]
        if not queues:
            self.stdout.write("this service consumes no events: no dead letters")
            return
        wanted = set(options["ids"]) if options["ids"] else None
        total = 0
        for queue in queues:
            if options["action"] == "list":
                letters = [letter for letter in dead_letter_list(queue) if wanted is None or letter.event_id in wanted]
            else:
                letters = dead_letter_redrive(queue, event_ids=wanted)
            total += len(letters)
            for letter in letters:
                if options["json"]:
                    self.stdout.write(json.dumps({"queue": queue, **letter.__dict__}))
                else:
                    verb = "redriven" if options["action"] == "redrive" else "dead"
                    self.stdout.write(
                        f"{verb} {letter.event_id} {letter.event.get('type')} from {queue} after "
                        f"{letter.attempts} attempts at {letter.dead_at}: {letter.error}"
                    )
        if options["action"] == "redrive" and wanted is not None and total < len(wanted):
            raise CommandError(f"redrove {total} of {len(wanted)} requested events; the others are not dead letters")
        self.stdout.write(f"{total} dead letter(s) {'redriven' if options['action'] == 'redrive' else 'listed'}")
