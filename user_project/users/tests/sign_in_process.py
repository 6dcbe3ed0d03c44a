"""Wrong-password sign-ins from a process of its own, for the tests that show every process of the service
shares one count of attempts per account.

Run as ``python -m users.tests.sign_in_process EMAIL ATTEMPTS`` from ``user_project/``, with the test
database's connection settings (JSON) in ``TEST_DATABASE``. It prints ``ready``, waits for a line on stdin
(so that the test can start several at one moment), makes its attempts and prints their outcomes as JSON.
"""

from __future__ import annotations

import json
import os
import sys

import django
from django.conf import settings


def main(email: str, attempts: int) -> list[str]:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "user_service.settings")
    # The test's database, not the development one the settings name; set before anything connects.
    settings.DATABASES = {"default": json.loads(os.environ["TEST_DATABASE"])}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    django.setup()

    from users.errors import InvalidCredentials, TooManyAttempts
    from users.services import auth_token_obtain

    print("ready", flush=True)
    sys.stdin.readline()
    outcomes = []
    for _ in range(attempts):
        try:
            auth_token_obtain(email=email, password="a wrong guess")
            outcomes.append("signed_in")
        except InvalidCredentials:
            outcomes.append("invalid_credentials")
        except TooManyAttempts:
            outcomes.append("too_many_attempts")
    return outcomes


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))), flush=True)
