"""``manage.py signing_keys list | rotate [--activate-in SECONDS] | retire KID``: the access-token signing keys.

Rotating publishes a new key at once and signs with it after ``--activate-in`` seconds
(``JWT_KEY_ACTIVATION_DELAY`` by default), so verifiers can fetch it before they meet a token signed with
it. Retire the previous key once the tokens it signed have expired (``JWT_ACCESS_TOKEN_LIFETIME``), or at
once if it leaked; verifiers drop it when their JWKS cache lapses (the gateway's ``JWKS_CACHE_TTL``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from users.keys import (
    SigningKeyError,
    signing_key_list_info,
    signing_key_retire,
    signing_key_rotate,
    signing_keys_forget_superseded,
)


class Command(BaseCommand):
    help = "List, rotate or retire the keys that sign access tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help="every key with its status")
        rotate = actions.add_parser("rotate", help="publish a new key; it signs after --activate-in seconds")
        rotate.add_argument(
            "--activate-in",
            type=float,
            default=None,
            help="seconds from now until the new key signs (default: JWT_KEY_ACTIVATION_DELAY)",
        )
        retire = actions.add_parser("retire", help="stop publishing a key that no longer signs")
        retire.add_argument("kid")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "rotate":
                delay = options["activate_in"]
                key = signing_key_rotate(activate_in=settings.JWT_KEY_ACTIVATION_DELAY if delay is None else delay)
                self.stdout.write(key.kid)
                self.stderr.write(f"published; signs from {key.activated_at.isoformat()}")
            elif action == "retire":
                key = signing_key_retire(kid=options["kid"])
                self.stderr.write(f"{key.kid} retired at {key.retired_at.isoformat() if key.retired_at else '-'}")
        except SigningKeyError as exc:
            raise CommandError(exc.message) from exc
        signing_keys_forget_superseded()
        for info in signing_key_list_info():
            if action == "list":
                retired = info.retired_at.isoformat() if info.retired_at else "-"
                self.stdout.write(
                    f"{info.kid}  {info.status:<9}  activated {info.activated_at.isoformat()}  retired {retired}"
                )
