"""Distributed tracing with OpenTelemetry: one client request, one trace across every process it touches.

``configure_tracing(service)`` is called once per process that does work worth seeing: each gunicorn
worker (from ``wsgi.py``, which gunicorn imports in the worker, after the fork), each Celery pool process
(``worker_process_init``, also after the fork: the batch processor's export thread and the trace file
belong to the process that made them), the outbox relays and the order saga sweeper. Tests and one-off
``manage.py`` commands never call it, so they write no trace files.

The maintained instrumentations do the spans and the propagation: Django (server spans, W3C
``traceparent`` read from the request), requests and urllib3 (client spans, ``traceparent`` written into
the outgoing headers), Celery (publish and run spans, context carried in
the message headers), and the database drivers (psycopg for PostgreSQL, sqlite3 in embedded mode).

Events take one more step: :func:`common.events.publish_event` stores the W3C context of the request in the
outbox row; the relay re-enters it around the send (:func:`continued_from`), so Celery's publish span and
the headers it writes belong to the request's trace even though the relay sends seconds later in another
process; the consumer (``common.tasks``) continues from the headers, or from the event's own
``trace_context`` when the headers carry none (an event re-driven from the dead-letter queue).

The gateway does not trust a client's ``traceparent``: a client could otherwise choose our trace ids (glue
its requests into someone else's trace, or collide with one), or force sampling decisions on us. The
gateway's entry (its ASGI dispatch; :func:`untrusted_trace_context` under a WSGI server) moves the client's
trace headers aside into ``CLIENT_CONTEXT_ENVIRON_KEY``, every trace starts at the gateway, and the
client's context is kept only as a span *link* on the gateway's span, so a caller that traces can still
find its side of the story. (The gateway's proxied requests skip the Django and urllib3 instrumentations,
which cost more than the rest of the proxy together: its edge application makes the same server span, and
its upstream client the client spans, by hand with the same tracer.)

Export: OTLP over HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (the exporter reads the other standard
``OTEL_EXPORTER_OTLP_*`` variables itself); otherwise spans go as JSON lines to ``VAR_DIR/traces/
<service>-<pid>.jsonl`` (:class:`JsonLinesSpanExporter`), which ``manage_all.py trace`` reads.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from common.request_id import get_request_id

logger = logging.getLogger(__name__)

REQUEST_ID_ATTRIBUTE = "shop.request_id"
CLIENT_CONTEXT_ENVIRON_KEY = "shop.client_trace_headers"
# The headers W3C trace context and baggage travel in, as WSGI environ keys.
_TRACE_ENVIRON_KEYS = ("HTTP_TRACEPARENT", "HTTP_TRACESTATE", "HTTP_BAGGAGE")
DEFAULT_FILE_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_FILE_RETENTION_SECONDS = 24 * 3600

_configured_pid: int | None = None
_lock = threading.Lock()


# -- the embedded-mode exporter ------------------------------------------------------------------------


def span_record(span: ReadableSpan, *, service: str) -> dict[str, Any]:
    """One span as the JSON object ``manage_all.py trace`` reads."""
    context = span.get_span_context()
    attributes = {key: _jsonable(value) for key, value in (span.attributes or {}).items()}
    status = span.status.status_code
    error = ""
    if status is StatusCode.ERROR:
        error = span.status.description or ""
        for event in span.events:
            if event.name == "exception" and event.attributes:
                error = (
                    error or f"{event.attributes.get('exception.type')}: {event.attributes.get('exception.message')}"
                )
                break
    return {
        "trace_id": format(context.trace_id, "032x") if context else "",
        "span_id": format(context.span_id, "016x") if context else "",
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "service": service,
        "name": span.name,
        "kind": span.kind.name.lower(),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": status.name.lower(),
        "error": error,
        "request_id": str(attributes.get(REQUEST_ID_ATTRIBUTE, "")),
        "attributes": attributes,
        "links": [
            {"trace_id": format(link.context.trace_id, "032x"), "span_id": format(link.context.span_id, "016x")}
            for link in span.links
        ],
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return [_jsonable(item) for item in value] if isinstance(value, Sequence) else str(value)


class JsonLinesSpanExporter(SpanExporter):
    """Writes each span as one JSON line to ``<directory>/<service>-<pid>.jsonl``.

    Bounded: when the file passes ``max_bytes`` it becomes ``...jsonl.1`` (replacing an older one), so a
    process keeps at most twice that on disk; files of processes gone for ``retention_seconds`` are deleted
    when a new process starts. The pid is checked on every export: a process forked after the exporter was
    made (Celery's pool, a preloading gunicorn) writes its own file rather than interleaving with its parent.
    """

    def __init__(
        self,
        directory: Path,
        *,
        service: str,
        max_bytes: int = DEFAULT_FILE_MAX_BYTES,
        retention_seconds: float = DEFAULT_FILE_RETENTION_SECONDS,
    ) -> None:
        self.directory = directory
        self.service = service
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._prune(retention_seconds)

    @property
    def path(self) -> Path:
        return self.directory / f"{self.service}-{os.getpid()}.jsonl"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span, service=self.service)) + "\n" for span in spans)
        try:
            with self._lock:
                path = self.path
                if path.exists() and path.stat().st_size >= self.max_bytes:
                    path.replace(path.with_name(path.name + ".1"))
                with path.open("a", encoding="utf-8") as file:
                    file.write(lines)
        except OSError:
            logger.warning("could not write spans to %s", self.directory, exc_info=True)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def _prune(self, retention_seconds: float) -> None:
        cutoff = time.time() - retention_seconds
        for old in self.directory.glob("*.jsonl*"):
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
            except OSError:
                pass  # another process pruned it first


# -- request ids on spans, trace ids in logs ------------------------------------------------------------


class RequestIdSpanProcessor(SpanProcessor):
    """Stamps every span started inside a request (or an event handled on its behalf) with its request id,
    so ``manage_all.py trace <request-id>`` finds the trace."""

    def on_start(self, span: Any, parent_context: otel_context.Context | None = None) -> None:
        request_id = get_request_id()
        if request_id != "-":
            span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def current_trace_id() -> str:
    """The current trace id in hex, or ``""`` outside any span (or with tracing off)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


class TraceIdLogFilter(logging.Filter):
    """Adds ``record.trace_id`` (``-`` outside a trace), next to ``common.request_id.RequestIdLogFilter``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id() or "-"
        return True


# -- propagation helpers --------------------------------------------------------------------------------


def context_from(carrier: Mapping[str, str]) -> otel_context.Context | None:
    """The remote context a W3C carrier (``traceparent``...) describes, or None when it describes none."""
    if not carrier:
        return None
    extracted = propagate.extract(dict(carrier))
    return extracted if trace.get_current_span(extracted).get_span_context().is_valid else None


@contextmanager
def continued_from(carrier: Mapping[str, str], name: str, *, kind: SpanKind = SpanKind.INTERNAL) -> Iterator[Any]:
    """A span that continues the trace ``carrier`` names (a fresh trace when it names none), made current
    for the block: what the block publishes or calls carries that trace on."""
    tracer = trace.get_tracer("common.tracing")
    with tracer.start_as_current_span(name, context=context_from(carrier), kind=kind) as span:
        yield span


def in_trace_of(carrier: Mapping[str, str]) -> bool:
    """Whether the current span already belongs to the trace ``carrier`` names."""
    remote = context_from(carrier)
    if remote is None:
        return True  # nothing to continue
    current = trace.get_current_span().get_span_context()
    return current.is_valid and current.trace_id == trace.get_current_span(remote).get_span_context().trace_id


@contextmanager
def untraced() -> Iterator[None]:
    """No spans from the instrumentations inside the block (a polling loop's idle queries)."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


def untrusted_trace_context(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI wrapper for the edge: the client's trace headers are moved out of the way before the Django
    instrumentation reads them, so every trace starts at the gateway; :func:`_link_client_context` then
    links the client's context to the gateway's span."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        moved = {key[5:].lower(): environ.pop(key) for key in _TRACE_ENVIRON_KEYS if key in environ}
        if moved:
            environ[CLIENT_CONTEXT_ENVIRON_KEY] = moved
        return app(environ, start_response)

    return application


def _link_client_context(span: Any, request: Any) -> None:
    carrier = request.META.get(CLIENT_CONTEXT_ENVIRON_KEY)
    remote = context_from(carrier) if carrier else None
    if remote is not None and span.is_recording():
        span.add_link(trace.get_current_span(remote).get_span_context(), {"shop.link": "client_traceparent"})


def _stamp_request_id(span: Any, request: Any, response: Any) -> None:
    # The Django span starts before RequestIdMiddleware has chosen the id; by the response it is known.
    request_id = getattr(request, "request_id", None)
    if request_id and span.is_recording():
        span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


# -- set-up ---------------------------------------------------------------------------------------------


def configure_tracing(service_name: str, *, trust_incoming_context: bool = True) -> bool:
    """Install the tracer provider, exporter and instrumentations in this process, once. False when tracing
    is switched off (``OTEL_SDK_DISABLED=true``) or was already set up in this process."""
    global _configured_pid
    from decouple import config

    if config("OTEL_SDK_DISABLED", default=False, cast=bool):
        return False
    with _lock:
        if _configured_pid == os.getpid():
            return False
        already_instrumented = _configured_pid is not None  # set up in a parent before a fork
        _configured_pid = os.getpid()

    if already_instrumented:
        # A child forked after set-up keeps its parent's provider and instrumentations: the batch processor
        # restarts its export thread after a fork by itself, and the file exporter names its file by pid.
        return True

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    endpoint = config("OTEL_EXPORTER_OTLP_ENDPOINT", default="")
    exporter: SpanExporter
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, _TIMEOUT itself
    else:
        from django.conf import settings

        exporter = JsonLinesSpanExporter(
            Path(settings.VAR_DIR) / "traces",
            service=service_name,
            max_bytes=config("TRACE_FILE_MAX_BYTES", default=DEFAULT_FILE_MAX_BYTES, cast=int),
        )
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(RequestIdSpanProcessor())
    # Batched: a request never waits for the exporter. Spans still queued when a process is killed are lost.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    _instrument(trust_incoming_context=trust_incoming_context)
    return True


def _instrument(*, trust_incoming_context: bool) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    def request_hook(span: Any, request: Any) -> None:
        if not trust_incoming_context:
            _link_client_context(span, request)

    DjangoInstrumentor().instrument(request_hook=request_hook, response_hook=_stamp_request_id)
    RequestsInstrumentor().instrument()
    URLLib3Instrumentor().instrument()
    CeleryInstrumentor().instrument()
    _tolerate_declared_exchanges()
    PsycopgInstrumentor().instrument()
    SQLite3Instrumentor().instrument()


def _tolerate_declared_exchanges() -> None:
    """The Celery instrumentation (0.66b1) reads ``declare`` of a publish as a list of queues and raises on
    the bare ``Exchange`` that ``common.events.send_event`` declares; its signal handler then stops before
    writing ``traceparent`` into the headers. Until that is fixed upstream, it gets only declarations it can
    read (the attribute it derives from them is informational)."""
    from opentelemetry.instrumentation.celery import utils

    original = utils.set_attributes_from_context
    if getattr(original, "_tolerant", False):
        return

    def set_attributes_from_context(span: Any, context: Any) -> None:
        if isinstance(context, dict) and context.get("declare"):
            declared = [item for item in context["declare"] if hasattr(item, "exchange")]
            context = {**context, "declare": declared}
        original(span, context)

    set_attributes_from_context._tolerant = True  # type: ignore[attr-defined]
    utils.set_attributes_from_context = set_attributes_from_context
