"""Tracing: the embedded-mode span files, request ids on spans, trace ids in logs and errors, and the
propagation helpers the relay, the consumer and the gateway use."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from common import request_id, tracing
from common.errors import error_body
from common.events import Event
from common.tasks import handle_event
from tests import handlers

TRACEPARENT = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[tuple[TracerProvider, tracing.JsonLinesSpanExporter]]:
    exporter = tracing.JsonLinesSpanExporter(tmp_path / "traces", service="orders")
    provider = TracerProvider()
    provider.add_span_processor(tracing.RequestIdSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def written(exporter: tracing.JsonLinesSpanExporter) -> list[dict[str, Any]]:
    return [json.loads(line) for line in exporter.path.read_text().splitlines()]


def test_each_span_is_one_json_line_with_its_parent_status_and_request_id(provider: Any) -> None:
    tracer_provider, exporter = provider
    tracer = tracer_provider.get_tracer("test")
    token = request_id.set_request_id("req-12345678")
    try:
        with tracer.start_as_current_span("POST /orders", kind=trace.SpanKind.SERVER) as parent:
            with tracer.start_as_current_span("INSERT") as child:
                child.set_attribute("db.system", "sqlite")
                child.set_attribute("numbers", [1, 2])
            parent.set_status(Status(StatusCode.ERROR, "payment declined"))
    finally:
        request_id.reset_request_id(token)

    child_line, parent_line = written(exporter)
    assert exporter.path.name == f"orders-{os.getpid()}.jsonl"
    assert child_line["trace_id"] == parent_line["trace_id"] == format(parent.get_span_context().trace_id, "032x")
    assert child_line["parent_id"] == parent_line["span_id"]
    assert parent_line["parent_id"] is None
    assert (parent_line["service"], parent_line["name"], parent_line["kind"]) == ("orders", "POST /orders", "server")
    assert (parent_line["status"], parent_line["error"]) == ("error", "payment declined")
    assert (child_line["status"], child_line["error"]) == ("unset", "")
    assert child_line["request_id"] == parent_line["request_id"] == "req-12345678"
    assert child_line["attributes"]["db.system"] == "sqlite"
    assert child_line["attributes"]["numbers"] == [1, 2]
    assert child_line["end_ns"] >= child_line["start_ns"] > 0


def test_a_recorded_exception_is_the_spans_error(provider: Any) -> None:
    tracer_provider, exporter = provider
    tracer = tracer_provider.get_tracer("test")
    with pytest.raises(ValueError, match="card expired"), tracer.start_as_current_span("charge"):
        raise ValueError("card expired")

    (line,) = written(exporter)
    assert line["status"] == "error"
    assert "card expired" in line["error"]


def test_the_file_rotates_once_it_passes_its_cap(tmp_path: Path) -> None:
    exporter = tracing.JsonLinesSpanExporter(tmp_path, service="users", max_bytes=2000)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for index in range(40):
        with provider.get_tracer("test").start_as_current_span(f"span {index}"):
            pass

    rotated = exporter.path.with_name(exporter.path.name + ".1")
    assert rotated.exists()
    assert exporter.path.stat().st_size < 2000 + 1000  # one batch past the cap at most
    assert rotated.stat().st_size < 2000 + 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == [exporter.path.name, rotated.name]


def test_files_of_long_gone_processes_are_pruned_at_start(tmp_path: Path) -> None:
    old, recent = tmp_path / "users-1.jsonl", tmp_path / "users-2.jsonl"
    old.write_text("{}\n")
    recent.write_text("{}\n")
    os.utime(old, (time.time() - 7200, time.time() - 7200))

    tracing.JsonLinesSpanExporter(tmp_path, service="users", retention_seconds=3600)

    assert not old.exists()
    assert recent.exists()


def test_log_records_and_error_bodies_carry_the_trace_id(provider: Any) -> None:
    tracer_provider, _ = provider
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    tracing.TraceIdLogFilter().filter(record)
    assert record.trace_id == "-"
    assert error_body("not_found", "Nope.") == {"error": {"code": "not_found", "message": "Nope.", "details": {}}}

    token = request_id.set_request_id("req-abcdefgh")
    try:
        with tracer_provider.get_tracer("test").start_as_current_span("GET") as span:
            tracing.TraceIdLogFilter().filter(record)
            body = error_body("not_found", "Nope.")
    finally:
        request_id.reset_request_id(token)

    trace_id = format(span.get_span_context().trace_id, "032x")
    assert record.trace_id == trace_id
    assert body["error"]["trace_id"] == trace_id
    assert body["error"]["request_id"] == "req-abcdefgh"


def test_continued_from_joins_the_trace_a_carrier_names() -> None:
    with tracing.continued_from({"traceparent": TRACEPARENT}, "outbox relay order.created"):
        assert tracing.current_trace_id() == "ab" * 16
        assert tracing.in_trace_of({"traceparent": TRACEPARENT})
    assert not tracing.in_trace_of({"traceparent": TRACEPARENT})  # outside it
    assert tracing.in_trace_of({})  # nothing to continue
    assert tracing.context_from({"traceparent": "garbage"}) is None


def test_the_edge_moves_a_clients_trace_headers_out_of_the_instrumentations_reach() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        return []

    tracing.untrusted_trace_context(app)(
        {"HTTP_TRACEPARENT": TRACEPARENT, "HTTP_TRACESTATE": "vendor=1", "HTTP_ACCEPT": "*/*"}, None
    )

    assert "HTTP_TRACEPARENT" not in seen
    assert "HTTP_TRACESTATE" not in seen
    assert seen["HTTP_ACCEPT"] == "*/*"
    assert seen[tracing.CLIENT_CONTEXT_ENVIRON_KEY] == {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}


@pytest.mark.django_db
def test_an_event_without_trace_headers_continues_the_trace_its_outbox_row_stored(
    handler_calls: list[handlers.Call],
) -> None:
    event = Event(type="thing.happened", data={}, request_id="req-12345678", trace_context={"traceparent": TRACEPARENT})

    assert handle_event.apply(kwargs={"event": asdict(event)}).successful()

    assert [call.trace_id for call in handler_calls] == ["ab" * 16]


def test_with_an_otlp_endpoint_spans_are_posted_to_the_collector(tmp_path: Path) -> None:
    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # A process of its own: configure_tracing installs the global provider and the instrumentations.
    script = (
        "import django; django.setup()\n"
        "from opentelemetry import trace\n"
        "from common.tracing import configure_tracing\n"
        "assert configure_tracing('orders')\n"
        "assert not configure_tracing('orders')  # once per process\n"
        "with trace.get_tracer('t').start_as_current_span('exported over otlp'): pass\n"
        "trace.get_tracer_provider().force_flush()\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
        "VAR_DIR": str(tmp_path),
    }
    try:
        done = subprocess.run(  # noqa: S603 (our own command line)
            [sys.executable, "-c", script], cwd=Path(__file__).parent.parent, env=env, capture_output=True, timeout=60
        )
    finally:
        server.shutdown()

    assert done.returncode == 0, done.stderr.decode()
    assert [(path, kind) for path, kind, _ in received] == [("/v1/traces", "application/x-protobuf")]
    assert b"exported over otlp" in received[0][2]
    assert b"orders" in received[0][2]  # service.name
    assert not (tmp_path / "traces").exists()  # no files when exporting
