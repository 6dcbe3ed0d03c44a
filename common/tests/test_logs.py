"""Log records as JSON lines (common.logs), configured as every service configures them."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator

import pytest
from django.test import Client

from common.request_id import reset_request_id, set_request_id
from common.settings import logging_config

FIELDS = {"time", "service", "level", "logger", "message", "request_id", "trace_id"}


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The services' logging configuration, writing to a buffer instead of stderr."""
    stream = io.StringIO()
    config = logging_config(service="orders", level="INFO")
    config["handlers"]["console"]["stream"] = stream
    config["loggers"]["django.request"]["handlers"] = ["console"]  # Django's own handler would print it too
    config["loggers"]["django.request"]["propagate"] = False
    logging.config.dictConfig(config)
    yield stream
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_the_service_level_logger_and_ids(log_stream: io.StringIO) -> None:
    token = set_request_id("req-logs-0001")
    try:
        logging.getLogger("orders.services").warning("order %s\nconfirmed", 42)
    finally:
        reset_request_id(token)

    [entry] = lines(log_stream)  # the newline in the message did not split the record
    assert set(entry) == FIELDS
    assert entry["service"] == "orders"
    assert (entry["level"], entry["logger"]) == ("WARNING", "orders.services")
    assert entry["message"] == "order 42\nconfirmed"
    assert entry["request_id"] == "req-logs-0001"
    assert entry["trace_id"] == ""  # no trace: present and empty
    assert str(entry["time"]).endswith("+00:00")


def test_an_exception_is_a_field_of_its_record(log_stream: io.StringIO) -> None:
    try:
        raise ValueError("bad thing")
    except ValueError:
        logging.getLogger("orders").exception("it failed")

    [entry] = lines(log_stream)
    assert entry["message"] == "it failed"
    assert "ValueError: bad thing" in str(entry["exception"])
    assert "Traceback" in str(entry["exception"])


def test_structured_fields_are_added_but_never_replace_the_core_ones(log_stream: io.StringIO) -> None:
    logging.getLogger("gateway.access").info("GET / 200", extra={"fields": {"status": 200, "service": "spoofed"}})

    [entry] = lines(log_stream)
    assert entry["status"] == 200
    assert entry["service"] == "orders"


@pytest.mark.django_db
def test_a_failed_request_is_logged_with_its_id_and_without_its_headers_or_cookies(log_stream: io.StringIO) -> None:
    client = Client(raise_request_exception=False)
    client.cookies["sessionid"] = "cookie-secret-value"

    response = client.get(
        "/crash/?token=query-secret",
        headers={"Authorization": "Bearer header-secret-value", "X-Request-ID": "req-logs-0002"},
    )

    assert response.status_code == 500
    text = log_stream.getvalue()
    [entry] = [entry for entry in lines(log_stream) if entry["logger"] == "django.request"]
    assert entry["request_id"] == "req-logs-0002"
    assert entry["level"] == "ERROR"
    assert "RuntimeError: a bug outside DRF" in str(entry["exception"])
    for secret in ("header-secret-value", "cookie-secret-value"):
        assert secret not in text
