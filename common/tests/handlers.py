"""Event handlers named in the test settings' EVENT_HANDLERS: they record what they were called with."""

from __future__ import annotations

from dataclasses import dataclass

from common.events import Event
from common.request_id import get_request_id
from common.tracing import current_trace_id


@dataclass(frozen=True)
class Call:
    event: Event
    request_id: str  # the request id in effect while the handler ran
    trace_id: str = ""  # the trace it ran in (common.tracing), "" outside any


calls: list[Call] = []


def record(event: Event) -> None:
    calls.append(Call(event=event, request_id=get_request_id(), trace_id=current_trace_id()))


def fail_transiently(event: Event) -> None:
    calls.append(Call(event=event, request_id=get_request_id()))
    raise ConnectionRefusedError("the mail server is down")


def fail_permanently(event: Event) -> None:
    calls.append(Call(event=event, request_id=get_request_id()))
    raise ValueError("a bug in the handler")
