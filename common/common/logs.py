"""Log records as JSON lines: one object per record, on one line, for machines first.

Every line has the same keys: ``time`` (UTC, ISO 8601, milliseconds), ``service``, ``level``, ``logger``,
``message``, ``request_id`` and ``trace_id`` (empty outside a request or a trace), and ``exception`` (the
formatted traceback) when the record carries one. ``manage_all.py logs`` reads these keys.

Only what is named here is written. Structured fields are passed explicitly as ``extra={"fields": {...}}``
(the gateway's access log does); other attributes that loggers attach to records (Django's ``request``,
with its headers and cookies) are never serialised, so a secret cannot reach the log by accident.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

# The fields the formatter owns; a structured field of the same name never replaces them.
CORE_FIELDS = ("time", "service", "level", "logger", "message", "request_id", "trace_id")
# Compact and ASCII-only: one physical line whatever the message holds (newlines are escaped). One encoder
# for every line: json.dumps with options builds a new one per call (the gateway writes a line per request).
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _context_value(record: logging.LogRecord, name: str) -> str:
    value = getattr(record, name, "") or ""
    return "" if value == "-" else str(value)  # the filters' "-" means "none": absent is empty here


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str = "", **kwargs: Any) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "service": self.service,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": _context_value(record, "request_id"),
            "trace_id": _context_value(record, "trace_id"),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({key: value for key, value in fields.items() if key not in CORE_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(entry)
