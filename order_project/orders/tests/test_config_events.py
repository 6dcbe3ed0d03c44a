"""The order service consumes config.changed (its event worker, EVENT_HANDLERS) and passes the news to all
of its processes through the marker they share, against a real config server on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.conf import settings

from common import runtime_config
from common.events import Event
from common.runtime_config import RuntimeConfig, marker_key, marker_store
from common.tasks import handle_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def config_versions() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A config center for orders/default answering the last of ``versions`` (version = its position)."""
    versions: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = json.dumps({"version": len(versions), "values": versions[-1] if versions else {}}).encode()
            self.send_response(200 if self.path == "/config/orders/default/" else 404)
            self.send_header("ETag", f'"orders.default.v{len(versions)}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    host, port = server.server_address[:2]
    yield f"http://{host!s}:{port}", versions
    server.shutdown()
    server.server_close()


def test_the_order_service_subscribes_to_config_changed() -> None:
    (queue,) = settings.CELERY_TASK_QUEUES
    assert queue.name == "orders.events"
    assert [binding.routing_key for binding in queue.bindings] == ["config.changed"]


def test_a_handled_config_changed_reaches_a_web_process_well_before_the_ttl(
    config_versions: tuple[str, list[dict[str, Any]]],
) -> None:
    url, versions = config_versions
    versions.append({"upstream.read_timeout": 5.0})
    web_process = RuntimeConfig(
        url=url,
        service="orders",
        profile="default",
        secret=settings.INTERNAL_AUTH_SECRET,
        ttl=600,
        marker_interval=0.05,
        store=marker_store(),
    )
    assert web_process.get("upstream.read_timeout") == 5.0

    versions.append({"upstream.read_timeout": 9.0})
    event = Event(type="config.changed", data={"service": "orders", "profile": "default", "version": 2})
    handle_event.apply(kwargs={"event": asdict(event)}).get()  # as the order service's event worker runs it

    assert marker_store().get(marker_key("default")) == 2
    deadline = time.monotonic() + 5
    while web_process.get("upstream.read_timeout") != 9.0:
        assert time.monotonic() < deadline, "the announcement did not reach the other process"
        time.sleep(0.02)
    assert not runtime_config.client().started  # the worker only announced; it fetched nothing
    web_process.stop()
