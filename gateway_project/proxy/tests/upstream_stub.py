"""A small real HTTP server standing in for a service: it records what reached it and answers as a test
tells it to. The user service's stub also publishes a JWKS."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JWKS_PATH = "/.well-known/jwks.json"


@dataclass
class Received:
    method: str
    target: str
    headers: Message
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes | None = None  # None: a JSON echo naming the service and path
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0


class StubUpstream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.received: list[Received] = []
        self.replies: dict[str, Reply] = {}
        self.health: tuple[int, dict[str, Any]] = (200, {})
        self.health_delay = 0.0
        self.health_checks = 0
        self.jwks: dict[str, Any] = {"keys": []}
        self.jwks_fetches = 0
        # Close a kept-alive connection when a second request arrives on it, unanswered: the race of a
        # service's keep-alive timeout with the gateway reusing the connection.
        self.drop_reused_connections = False
        self.server = _QuietServer(("127.0.0.1", 0), _StubHandler)
        self.server.stub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"stub-{name}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def reply(self, path_prefix: str, **kwargs: Any) -> None:
        self.replies[path_prefix] = Reply(**kwargs)

    def reply_for(self, target: str) -> Reply:
        matches = [prefix for prefix in self.replies if target.startswith(prefix)]
        return self.replies[max(matches, key=len)] if matches else Reply()

    def reset(self) -> None:
        self.received.clear()
        self.replies.clear()
        self.health = (200, {"database": "ok", "cache": "ok", "broker": "ok"})
        self.health_delay = 0.0
        self.health_checks = 0
        self.jwks_fetches = 0
        self.drop_reused_connections = False

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: the gateway dropping a pooled connection between tests is no error."""


class _StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the services behind gunicorn
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        stub: StubUpstream = self.server.stub  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        served_before = getattr(self, "served", 0)
        self.served = served_before + 1
        if stub.drop_reused_connections and served_before:
            self.close_connection = True
            return
        if self.path == JWKS_PATH:
            stub.jwks_fetches += 1
            self._send(200, json.dumps(stub.jwks).encode(), [("Content-Type", "application/json")])
            return
        if self.path == "/health/":
            stub.health_checks += 1
            status, document = stub.health
            time.sleep(stub.health_delay)
            self._send(status, json.dumps(document).encode(), [("Content-Type", "application/json")])
            return
        stub.received.append(Received(self.command, self.path, self.headers, body))
        reply = stub.reply_for(self.path)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.body is None:
            echo = {"service": stub.name, "method": self.command, "path": self.path}
            self._send(reply.status, json.dumps(echo).encode(), [("Content-Type", "application/json"), *reply.headers])
        else:
            self._send(reply.status, reply.body, reply.headers)

    def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        # OSError: the gateway gave up waiting (timeout tests) and closed the connection.
        with contextlib.suppress(OSError):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle
