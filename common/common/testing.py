"""Helpers for the services' test suites."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from celery import Celery
from django.conf import settings
from django.test.utils import override_settings
from kombu import Connection, Queue, binding, pools
from kombu.transport.filesystem import Transport as FilesystemTransport

from common import runtime_config
from common.events import EVENTS_EXCHANGE, has_outbox
from common.internal_auth import HEADER, mint_assertion
from common.outbox import relay_pending


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


@dataclass(frozen=True)
class PublishedEvent:
    """One message that reached a test's queue: its routing key, Celery task name and event envelope."""

    routing_key: str
    task: str
    event: dict[str, Any]


class EventBroker:
    """A private kombu filesystem broker under a test's tmp folder, with a service's Celery app pointed at it,
    so events a test publishes are real messages it can read back, and never reach the development broker
    under var/ or a RabbitMQ named by BROKER_URL."""

    # A host in the URL spares kombu's "No hostname was supplied" warning; the transport ignores it.
    url = "filesystem://localhost/"
    transport = "common.broker:FilesystemTransport"

    def __init__(self, root: Path, celery_app: Celery) -> None:
        self.celery_app = celery_app
        for folder in ("queue", "control"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.transport_options: dict[str, Any] = {
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "control_folder": str(root / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        }
        self._saved_conf: tuple[Any, Any, Any] | None = None
        # Whatever reads the broker from Django's settings (the health check) sees this broker too.
        self._settings = override_settings(
            CELERY_BROKER_URL=self.url,
            CELERY_BROKER_TRANSPORT=self.transport,
            CELERY_BROKER_TRANSPORT_OPTIONS=self.transport_options,
        )

    def start(self) -> None:
        conf = self.celery_app.conf
        self._saved_conf = (conf.broker_url, conf.broker_transport, conf.broker_transport_options)
        conf.broker_url = self.url
        conf.broker_transport = self.transport
        conf.broker_transport_options = self.transport_options
        self._settings.enable()
        self._forget_connections()

    def stop(self) -> None:
        if self._saved_conf is None:
            return
        self._settings.disable()
        conf = self.celery_app.conf
        conf.broker_url, conf.broker_transport, conf.broker_transport_options = self._saved_conf
        self._saved_conf = None
        self._forget_connections()

    def __enter__(self) -> EventBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def connection(self) -> Connection:
        return Connection(self.url, transport=self.transport, transport_options=self.transport_options)

    def subscribe(self, routing_key: str = "#") -> Callable[[], list[PublishedEvent]]:
        """Bind a new queue to the events exchange for ``routing_key`` (as a consuming service binds its
        own); the returned function relays the service's outbox (as ``relay_outbox`` would, so call it after
        the transaction has committed or within the test's own) and drains the queue, giving what arrived
        since in the order it was published."""
        # A fresh name each time: the transport remembers declared bindings process-wide, and would skip
        # recording an already known one in this broker's control folder.
        queue = Queue(f"test.{uuid.uuid4().hex}", [binding(EVENTS_EXCHANGE, routing_key=routing_key)])
        with self.connection() as connection:
            queue(connection.default_channel).declare()

        def drain() -> list[PublishedEvent]:
            self.relay()
            received = []
            with self.connection() as connection:
                bound = queue(connection.default_channel)
                while (message := bound.get(no_ack=True)) is not None:
                    _args, kwargs, _embed = message.decode()
                    received.append(
                        PublishedEvent(
                            routing_key=message.delivery_info["routing_key"],
                            task=message.headers["task"],
                            event=kwargs["event"],
                        )
                    )
            # The transport orders messages by millisecond, then at random: the envelope's occurred_at
            # (microseconds) tells the order in which they were published.
            return sorted(received, key=lambda published: published.event["occurred_at"])

        return drain

    def relay(self) -> int:
        """Send what the service's outbox holds to this broker now; the number of events sent."""
        if not has_outbox():
            return 0
        return relay_pending()

    def _forget_connections(self) -> None:
        # Connections and producers made before the switch would keep publishing to the other broker.
        pools.reset()  # closes kombu's shared connection and producer pools and forgets them
        if self.celery_app._pool is not None:
            self.celery_app._pool.force_close_all()
        self.celery_app._pool = None
        self.celery_app.amqp._producer_pool = None
        # The filesystem transport also remembers declared exchanges and bindings per process, and would
        # skip writing them into a new control folder.
        FilesystemTransport.global_state.clear()


class ConfigCenterStub:
    """A stand-in for the gateway's config center on loopback, for the services' tests (they cannot run the
    gateway's app): ``GET /config/<service>/<profile>/`` answers the last published version with its ETag,
    304 when revalidated with that ETag, and 404 for other paths or before anything was published, as the
    real one does. The wire format is pinned by the gateway's own client tests (configcenter/tests)."""

    def __init__(self, service: str, profile: str = "default") -> None:
        self.path = f"/config/{service}/{profile}/"
        self.version = 0
        self.values: dict[str, Any] = {}
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with stub._lock:
                    version, values = stub.version, stub.values
                etag = f'"{service}.{profile}.v{version}"'
                if self.path != stub.path or not version:
                    self._send(404, b'{"error": {"code": "not_found"}}')
                elif self.headers.get("If-None-Match") == etag:
                    self._send(304, b"", etag=etag)
                else:
                    self._send(200, json.dumps({"version": version, "values": values}).encode(), etag=etag)

            def _send(self, status: int, body: bytes, *, etag: str = "") -> None:
                self.send_response(status)
                if etag:
                    self.send_header("ETag", etag)
                if status != 304:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def publish(self, values: dict[str, Any]) -> int:
        """Save ``values`` as the next version; its number."""
        with self._lock:
            self.version += 1
            self.values = values
            return self.version

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@contextmanager
def no_config_center(marker_dir: Path) -> Iterator[None]:
    """For a service's suite, around every test: never a config center that may be running on this machine
    (127.0.0.1:8000) but a loopback port nothing listens on, so ``runtime_config`` answers with the settings
    (a test that needs one starts a :class:`ConfigCenterStub`); announced versions go to ``marker_dir``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unused_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with override_settings(CONFIG_CENTER_URL=unused_url, CONFIG_MARKER_DIR=str(marker_dir)):
        runtime_config.reset()
        try:
            yield
        finally:
            runtime_config.reset()


@contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose listen queue is full: a connection attempt gets no answer and times out
    (a host that is down or overloaded), unlike a closed port's immediate refusal."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        fillers = []
        try:
            for _ in range(3):  # Linux admits backlog + 1 before it drops SYNs
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            yield port
        finally:
            for filler in fillers:
                filler.close()
