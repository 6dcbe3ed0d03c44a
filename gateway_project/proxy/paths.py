"""Path hygiene: what a request path must look like before the gateway routes or forwards it.

The gateway forwards the path exactly as the client sent it and the service decodes it once more, so a
path that decodes into a different structure (``%2e%2e``, ``%2F``), that a server or framework might
normalise (``..``, ``//``, ``\\``), or that carries control characters is refused outright rather than
cleaned up: ``/api/v1/users/../../admin/`` must never reach an upstream or an admin. Both the raw form
(as received, from gunicorn's ``RAW_URI``) and the decoded one (Django's ``path_info``) are checked, which
also catches double encoding such as ``%252e``.
"""

from __future__ import annotations

import re

from django.http import HttpRequest

MAX_PATH_LENGTH = 2048

_UNSAFE = re.compile(
    r"""
      //                            # empty segment: normalised away by some servers
    | \\                            # backslash: a separator for some
    | [\x00-\x1f\x7f]               # control characters, NUL included
    | %(?: 2e | 2f | 5c | [01][0-9a-f] | 7f )   # encoded dot, slash, backslash, control character
    | (?: ^ | / ) \.{1,2} (?: / | $ )          # dot segments
    """,
    re.IGNORECASE | re.VERBOSE,
)


def raw_target(request: HttpRequest) -> str:
    """The request target as the client sent it (path and query), or Django's re-encoded path when the
    server does not report it (the test client, runserver)."""
    environ = request.META
    return environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.get_full_path()


def is_safe_path(raw_path: str, decoded_path: str) -> bool:
    if not raw_path.startswith("/") or len(raw_path) > MAX_PATH_LENGTH or len(decoded_path) > MAX_PATH_LENGTH:
        return False  # also refuses absolute-form ("http://host/...") and asterisk-form targets
    return _UNSAFE.search(raw_path) is None and _UNSAFE.search(decoded_path) is None
