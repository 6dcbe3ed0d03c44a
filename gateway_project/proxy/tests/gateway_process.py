"""Real gateways for the resilience tests: gunicorn (its ASGI worker and ``gateway.asgi``, as the launcher
runs it) in its own process, configured through its environment like a deployment, and real upstream
processes to stop and restart."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from django.conf import settings

from proxy.tests.upstream_stub import JWKS_PATH, StubUpstream, _QuietServer, _StubHandler

PROJECT_DIR = Path(__file__).resolve().parents[2]


class GatewayProcess:
    def __init__(self, port: int, log_path: Path, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.log_path = log_path
        self.process = process

    def request(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()

    def health(self) -> dict[str, Any]:
        _, _, body = self.request("GET", "/health")
        return json.loads(body)

    def log(self) -> str:
        return self.log_path.read_text()


@contextlib.contextmanager
def gateway_process(
    tmp_path: Path, upstreams: dict[str, str], workers: int = 1, **env_overrides: str
) -> Iterator[GatewayProcess]:
    """A gateway in front of ``upstreams`` (service -> *_SERVICE_URL value), in embedded mode unless
    an override sets REDIS_URL."""
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="gateway.settings",
        VAR_DIR=str(tmp_path),
        SECRET_KEY=settings.SECRET_KEY,
        INTERNAL_AUTH_SECRET=settings.INTERNAL_AUTH_SECRET,
        USER_SERVICE_URL=upstreams["users"],
        ORDER_SERVICE_URL=upstreams["orders"],
        PAYMENT_SERVICE_URL=upstreams["payments"],
        JWKS_URL=f"{upstreams['users'].split(',')[0]}{JWKS_PATH}",
        LOG_LEVEL="INFO",
    )
    env.update(env_overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / f"gunicorn-{time.monotonic_ns()}.log"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    command = [
        sys.executable, "-m", "gunicorn", "gateway.asgi:application",
        "--bind", f"fd://{listener.fileno()}",
        "--worker-class", "asgi", "--workers", str(workers),
        "--graceful-timeout", "2",
        "--no-control-socket",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 (our own command line)
            command, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()]
        )
    gateway = GatewayProcess(listener.getsockname()[1], log_path, process)
    try:
        deadline = time.monotonic() + 60
        while True:  # every worker serving: each ASGI worker logs this once its event loop accepts connections
            if gateway.log().count("ASGI server listening on") >= workers:
                status, _, _ = gateway.request("GET", "/api/v1/nothing/")
                if status == 404:
                    break
            assert process.poll() is None, gateway.log()
            assert time.monotonic() < deadline, gateway.log()
            time.sleep(0.1)
        yield gateway
    finally:
        process.terminate()
        process.wait(timeout=10)
        listener.close()


class _TrackingServer(_QuietServer):
    """Knows its open connections, so that stopping it can cut them as a process exit would."""

    def __init__(self, *args: Any) -> None:
        self.connections: set[socket.socket] = set()
        super().__init__(*args)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)


class RestartableStub(StubUpstream):
    """A stub that can go away, kept-alive connections included, and come back on the same port, like
    an instance being restarted."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        super().stop()
        self._serve(0)

    def _serve(self, port: int) -> None:
        self.server = _TrackingServer(("127.0.0.1", port), _StubHandler)
        self.server.stub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"stub-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        super().stop()
        for connection in list(self.server.connections):  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def start_again(self) -> None:
        self._serve(self.server.server_address[1])


class StaticUpstreamProcess:
    """A real upstream process (Python's http.server over a folder of JSON documents): it answers its
    paths and /health/ with 200, and can be killed and started again on the same port."""

    def __init__(self, root: Path, paths: list[str]) -> None:
        self.root = root
        for path in [*paths, "/health/"]:
            folder = root / path.strip("/")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "index.html").write_text(json.dumps({"path": path}))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 (our own command line)
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1", "--directory", str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._listening, timeout=10)

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(interval)
