"""The request id: kept from the caller when well-formed, generated otherwise, present in every log line,
every error body and every call made on the request's behalf."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

HEADER = "X-Request-ID"
# Strict enough that a client cannot inject log lines or header values, loose enough for the usual
# UUID, ULID and hex formats other systems send. Matched with fullmatch: "$" would also accept a trailing
# newline.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{8,128}")

_current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_or_generate(candidate: str | None) -> str:
    if candidate and _WELL_FORMED.fullmatch(candidate):
        return candidate
    return new_request_id()


def get_request_id() -> str:
    return _current.get()


def current_or_new_request_id() -> str:
    """For outbound calls and events: work started outside any request still gets an id to trace."""
    current = _current.get()
    return current if current != "-" else new_request_id()


def set_request_id(value: str) -> contextvars.Token[str]:
    return _current.set(value)


def reset_request_id(token: contextvars.Token[str]) -> None:
    _current.reset(token)


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = accept_or_generate(request.headers.get(HEADER))
        request.request_id = request_id  # type: ignore[attr-defined]
        token = set_request_id(request_id)
        try:
            response = self.get_response(request)
        finally:
            reset_request_id(token)
        response[HEADER] = request_id
        return response


class RequestIdLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # A record may name its request itself (extra={"request_id": ...}): logged after the request's context
        # ended, as the gateway's access line of a streamed response is.
        if not getattr(record, "request_id", None) or get_request_id() != "-":
            record.request_id = get_request_id()
        return True
