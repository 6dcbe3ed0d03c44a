"""``manage.py config_set SERVICE PROFILE key=value ... --author NAME``: save a new version from the
current one with the given keys changed (``key=`` removes one). Values are JSON (``5``, ``true``,
``"600/minute"``; a bare word is taken as a string). Prints the new version and the time it committed."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from common.errors import ApplicationError
from configcenter.selectors import current_version
from configcenter.services import save_version


class Command(BaseCommand):
    help = "Save a new config-center version with some keys changed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("service")
        parser.add_argument("profile")
        parser.add_argument("assignments", nargs="+", metavar="key=value")
        parser.add_argument("--author", required=True)
        parser.add_argument("--comment", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        latest = current_version(options["service"], options["profile"])
        values = dict(latest.values) if latest else {}
        for assignment in options["assignments"]:
            key, sep, raw = assignment.partition("=")
            if not sep:
                raise CommandError(f"{assignment!r}: expected key=value")
            if raw == "":
                values.pop(key, None)
                continue
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError:
                values[key] = raw
        try:
            saved = save_version(
                service=options["service"],
                profile=options["profile"],
                values=values,
                author=options["author"],
                comment=options["comment"],
            )
        except ApplicationError as exc:
            raise CommandError(f"{exc.code}: {exc.message} {json.dumps(exc.details)}") from exc
        self.stdout.write(f"{saved} committed_at={time.time():.3f}")
