from __future__ import annotations

import json
import logging
import re

import pytest
from django.test import Client

from common import request_id
from common.logs import JsonFormatter
from common.settings import logging_config
from common.tracing import TraceIdLogFilter

GENERATED = re.compile(r"^[0-9a-f]{32}$")


@pytest.mark.parametrize(
    "candidate",
    [
        "abcdefgh",  # the shortest accepted
        "a" * 128,  # the longest accepted
        "3f2b8c1e-5d4a-4e8b-9c7d-0a1b2c3d4e5f",  # UUID
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # ULID
        "trace.id_01:span-02",
    ],
)
def test_well_formed_request_ids_are_kept(candidate: str) -> None:
    assert request_id.accept_or_generate(candidate) == candidate


@pytest.mark.parametrize(
    "candidate",
    [
        None,
        "",
        "abcdefg",  # too short
        "a" * 129,  # too long
        "has a space",
        "abcdefgh\n",  # a trailing newline would end up in log lines and headers
        "abcdefgh\r\nX-Injected: 1",
        "abcdefgh\x00",
        "ünïcödé-request",
        "١٢٣٤٥٦٧٨٩",  # digits, but not ASCII ones
        "abcdefgh/../",
    ],
)
def test_malformed_request_ids_are_replaced_by_a_generated_one(candidate: str | None) -> None:
    accepted = request_id.accept_or_generate(candidate)

    assert GENERATED.match(accepted)


def test_current_or_new_request_id_outside_a_request_generates_a_fresh_one_each_time() -> None:
    assert request_id.get_request_id() == "-"

    first, second = request_id.current_or_new_request_id(), request_id.current_or_new_request_id()

    assert GENERATED.match(first)
    assert first != second


def test_current_or_new_request_id_inside_a_request_is_the_request_s() -> None:
    token = request_id.set_request_id("req-12345678")
    try:
        assert request_id.current_or_new_request_id() == "req-12345678"
    finally:
        request_id.reset_request_id(token)

    assert request_id.get_request_id() == "-"


def test_middleware_keeps_the_callers_id_for_the_request_and_the_response(client: Client) -> None:
    response = client.get("/request-id/", headers={"X-Request-ID": "caller-id-0001"})

    assert response.status_code == 200
    assert response.json() == {"request_id": "caller-id-0001", "attribute": "caller-id-0001"}
    assert response["X-Request-ID"] == "caller-id-0001"
    assert request_id.get_request_id() == "-"  # reset once the request is over


@pytest.mark.parametrize("sent", [None, "short", "abcdefgh\n", "x" * 200])
def test_middleware_replaces_a_missing_or_malformed_id(client: Client, sent: str | None) -> None:
    response = client.get("/request-id/", headers={"X-Request-ID": sent} if sent is not None else {})

    assert response.status_code == 200
    generated = response.json()["request_id"]
    assert GENERATED.match(generated)
    assert response["X-Request-ID"] == generated


def test_log_filter_adds_the_current_request_id_to_every_record() -> None:
    record = logging.LogRecord("shop", logging.INFO, __file__, 1, "hello", None, None)
    token = request_id.set_request_id("req-12345678")
    try:
        assert request_id.RequestIdLogFilter().filter(record) is True
    finally:
        request_id.reset_request_id(token)

    assert record.request_id == "req-12345678"  # type: ignore[attr-defined]


def test_logging_config_lines_name_the_service_and_the_request() -> None:
    config = logging_config(service="orders", level="INFO")
    record = logging.LogRecord("orders.services", logging.INFO, __file__, 1, "order %s confirmed", (42,), None)
    request_id.RequestIdLogFilter().filter(record)  # outside any request
    TraceIdLogFilter().filter(record)  # and outside any trace

    line = JsonFormatter(service=config["formatters"]["json"]["service"]).format(record)

    assert config["filters"]["request_id"]["()"] == "common.request_id.RequestIdLogFilter"
    assert config["filters"]["trace_id"]["()"] == "common.tracing.TraceIdLogFilter"
    assert config["handlers"]["console"]["filters"] == ["request_id", "trace_id"]
    assert config["formatters"]["json"]["()"] == "common.logs.JsonFormatter"
    assert json.loads(line) | {"time": None} == {
        "time": None,
        "service": "orders",
        "level": "INFO",
        "logger": "orders.services",
        "message": "order 42 confirmed",
        "request_id": "",
        "trace_id": "",
    }
