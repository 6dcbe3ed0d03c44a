"""Helpers for the services' test suites."""

from __future__ import annotations

from django.conf import settings

from common.internal_auth import HEADER, mint_assertion


def assertion_headers(
    *, user_id: int | None = None, is_staff: bool = False, caller: str = "gateway", audience: str | None = None
) -> dict[str, str]:
    """Headers that make a test request look as if it came through the gateway (or ``caller``)."""
    token = mint_assertion(
        issuer=caller,
        audience=audience or settings.SERVICE_NAME,
        secret=settings.INTERNAL_AUTH_SECRET,
        user_id=user_id,
        is_staff=is_staff,
    )
    return {HEADER: token}
