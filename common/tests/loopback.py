"""A real HTTP server on a free loopback port, served from a thread, for testing code that calls over HTTP.

Each request is recorded; the answer comes from ``respond`` (a fixed sequence by default, see ``answer``)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering: a slow upstream


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class LoopbackServer:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.respond: Callable[[Received], Reply] = lambda received: Reply()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def answer(self, *replies: Reply) -> None:
        """Answer with these replies in turn, the last one from then on."""
        queue = list(replies)

        def respond(received: Received) -> Reply:
            return queue.pop(0) if len(queue) > 1 else queue[0]

        self.respond = respond

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [received for received in self.received if received.path.split("?")[0] == path]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()  # slow answers end now
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def _record(self, received: Received) -> Reply:
        with self._lock:
            self.received.append(received)
            return self.respond(received)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                reply = owner._record(Received(self.command, self.path, headers, body))
                if reply.delay:
                    owner._stopping.wait(reply.delay)
                payload = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True  # the client stopped waiting (a timeout test)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@contextmanager
def loopback_server() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HangUpServer:
    """A loopback server that reads each request and closes the connection without answering: the exchange
    breaks after the request was sent (a crash mid-request)."""

    def __init__(self) -> None:
        self.requests = 0
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2.0)
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                self.requests += 1

    def __enter__(self) -> HangUpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join()
        self._socket.close()
