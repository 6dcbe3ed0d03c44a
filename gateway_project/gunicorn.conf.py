"""gunicorn reads this file from the working directory (the launcher and the tests start the gateway in
``gateway_project/``); command-line options still win.

It prepares prometheus_client's multiprocess mode (see ``proxy/metrics.py``): each gunicorn master gets an
empty directory of its own before any worker starts, so two gateways sharing one ``VAR_DIR`` never mix or
wipe each other's values, and directories left by masters that are gone are removed. The variable must be
in the environment before a worker imports prometheus_client, which is why it is set here, in the master,
and not in the settings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any

from gunicorn import util
from gunicorn.asgi import parser as asgi_parser
from gunicorn.asgi import protocol as asgi_protocol
from gunicorn.asgi import websocket as asgi_websocket
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# A header name with an underscore is refused (400), not dropped (gunicorn's default) or mapped: WSGI
# would make "X_User_Id" and "X-User-Id" one key, and a silently dropped header hides an attack. The ASGI
# worker's HTTP/1 parser applies the same setting (gunicorn 27: asgi/protocol.py _RequestHeaderPolicy runs
# the HeaderPolicy the WSGI parser uses), and its 400 goes through the envelope below.
header_map = "refuse"

# The gateway faces clients: no peer, loopback included (gunicorn's default trusts 127.0.0.1 and ::1), may
# set the scheme (X-Forwarded-Proto and the like) or SCRIPT_NAME gunicorn gives the application. Behind
# proxies of ours the gateway reads X-Forwarded-Proto itself, by TRUSTED_PROXY_COUNT
# (proxy/client_address.py). The launcher passes the same on its command line; this covers any other run.
# Both workers read it: the ASGI worker's scope "scheme" is the socket's unless the peer is listed here,
# and with no peer listed no header name with an underscore (SCRIPT_NAME included) is let through either.
forwarded_allow_ips = ""

# Requests gunicorn's parser refuses (the underscore above, a duplicate Content-Length, Content-Length with
# Transfer-Encoding, a bad request line, an oversized header line) never reach the application, so gunicorn
# answers them itself, in HTML (WSGI workers) or plain text (ASGI worker). The gateway's clients expect the
# error envelope every other answer uses: gunicorn's functions for these answers are replaced here, in the
# master, so that every worker forked from it has them, whichever worker class runs. Its message names
# what was wrong (e.g. "Invalid HTTP header name: 'X_USER_ID'") and is JSON-escaped.
_CODES = {400: "bad_request", 403: "forbidden", 413: "payload_too_large", 414: "uri_too_long"}
_CODES |= {417: "expectation_failed", 426: "upgrade_required", 431: "headers_too_large"}
_CODES |= {500: "internal_error", 501: "not_implemented", 503: "gateway_busy"}
# gunicorn's (WSGI parser, header policy) and the ASGI parser's own classes
_HEADER_NAME_ERRORS = (http_errors.InvalidHeaderName, asgi_parser.InvalidHeaderName)
_HEADER_ERRORS = (http_errors.InvalidHeader, asgi_parser.InvalidHeader)


def _error_code(status_int: int, mesg: str) -> str:
    if status_int != 400:
        return _CODES.get(status_int, "bad_request")
    # Both workers answer from the except clause of the parser's exception, whose class names the fault: the
    # ASGI parser's messages do not always say "header" ("Content-Length with Transfer-Encoding") and its
    # refused header name is the name alone. The message decides for any other exception (another parser).
    exc = sys.exc_info()[1]
    if isinstance(exc, _HEADER_NAME_ERRORS):
        return "invalid_header_name"
    if isinstance(exc, _HEADER_ERRORS):
        return "invalid_header"
    if "header name" in mesg.lower():
        return "invalid_header_name"
    return "invalid_header" if "header" in mesg.lower() else "bad_request"


def _error_response(status_int: int, reason: str, mesg: str, extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The whole response, head and body, for an error gunicorn answers itself. The connection is
    always closed after it: what follows a refused request on the connection cannot be trusted."""
    code = _error_code(status_int, mesg)
    message = f"{reason}: {mesg}" if mesg and mesg != reason else reason
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}}, ensure_ascii=True).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {uuid.uuid4().hex}\r\n{extra}\r\n"
    )
    return head.encode("latin-1") + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    util.write_nonblock(sock, _error_response(status_int, reason, mesg))


util.write_error = _json_error  # WSGI workers (gthread, sync...): workers/base.py handle_error


_ASGI_BARE_ERRORS = (
    (asgi_parser.InvalidHeaderName, "Invalid HTTP header name"),
    (asgi_parser.InvalidRequestMethod, "Invalid HTTP method"),
    (asgi_parser.InvalidHTTPVersion, "Invalid HTTP version"),
    (asgi_parser.UnsupportedTransferCoding, "Unsupported transfer coding"),
)


def _asgi_json_error(
    self: asgi_protocol.ASGIProtocol, status: int, message: str, extra_headers: tuple[tuple[str, str], ...] = ()
) -> None:
    # The ASGI worker's parse errors (400, 414, 431, 501), the 426 and 400 of a bad WebSocket handshake, and
    # the 500 of an application that raised or returned before it answered. gunicorn closes the connection
    # after each but the last (returned without answering), which said "Connection: close" and was kept
    # alive: closed here, so that the header is true.
    reason = asgi_protocol._REASON_PHRASES.get(status) or _phrase(status)
    # The ASGI parser's errors of these classes say only the value they refused ("X@Y", "G(T")
    exc = sys.exc_info()[1]
    for kind, what in _ASGI_BARE_ERRORS:
        if isinstance(exc, kind):
            message = f"{what}: {message!r}"
            break
    self._safe_write(_error_response(status, reason, message, tuple(extra_headers)))
    self._close_transport()


asgi_protocol.ASGIProtocol._send_error_response = _asgi_json_error  # type: ignore[method-assign]


def _websocket_json_deny(self: asgi_websocket.WebSocketProtocol, status: int, reason: str) -> None:
    # A WebSocket handshake the application ended without accepting (403) or failed on (500): gunicorn
    # answers it itself (gunicorn 27: asgi/websocket.py _deny, an empty body), as it answers a parse error.
    if self._denied:
        return
    self._denied = True
    self.closed = True
    self._close_event.set()
    detail = "the WebSocket handshake was refused" if status == 403 else "the WebSocket application failed"
    with contextlib.suppress(OSError, RuntimeError):
        self.transport.write(_error_response(status, reason, detail))
        self.transport.close()


asgi_websocket.WebSocketProtocol._deny = _websocket_json_deny  # type: ignore[method-assign]

# An application's "Connection: close" is dropped by gunicorn with the other hop-by-hop headers, and the
# connection kept alive (gunicorn 27: Response.process_headers). The gateway says it when it refused a body
# it has not read (proxy/views.py: 413, a body it cannot frame): kept alive, the worker would read and
# discard the rest of that body, for as long as the client sends it, before the next request. Honoured
# here, in the master, so every worker has it: gunicorn then writes "Connection: close" itself and closes
# the connection after the response (gracefully, so the client still gets the answer).
_process_headers = wsgi.Response.process_headers


def _says_close(value: str) -> bool:
    return "close" in (token.strip().lower() for token in value.split(","))


def _process_headers_honouring_close(self: wsgi.Response, headers: list[tuple[str, str]]) -> None:
    _process_headers(self, headers)
    for name, value in headers:
        if name.lower() == "connection" and _says_close(value):
            self.force_close()


wsgi.Response.process_headers = _process_headers_honouring_close  # type: ignore[method-assign]

# The ASGI worker passes the application's "Connection: close" through but keeps the connection alive all
# the same (gunicorn 27: its keep-alive decision, ASGIProtocol._will_close, looks at the request, the
# worker and max_requests, never at the response's headers), with the same cost as above. Its send() scans
# the response's headers (_scan_response_headers) and then, with no await in between, asks _will_close; the
# scan notes what the application said, _will_close takes it, so the note never outlives that one
# http.response.start. _will_close then answers True, which closes the connection after the response, and
# marks the request must_close so that the decision is the same when it is asked again after the body.
_scan_response_headers = asgi_protocol._scan_response_headers
_will_close = asgi_protocol.ASGIProtocol._will_close
_app_said_close = [False]


def _scan_response_headers_noting_close(headers: Any) -> tuple[bool, Any, bool]:
    result = _scan_response_headers(headers)  # validates the names and values first
    _app_said_close[0] = any(
        (name.lower() in (b"connection", "connection"))
        and _says_close(value.decode("latin-1") if isinstance(value, bytes) else value)
        for name, value in headers
    )
    return result


def _will_close_honouring_close(self: asgi_protocol.ASGIProtocol, request: Any, response_requires_close: bool) -> bool:
    if _app_said_close[0]:
        _app_said_close[0] = False
        request.must_close = True
    return _will_close(self, request, response_requires_close)


asgi_protocol._scan_response_headers = _scan_response_headers_noting_close
asgi_protocol.ASGIProtocol._will_close = _will_close_honouring_close  # type: ignore[method-assign]


# Connections the ASGI worker holds open. gunicorn 27's ASGI worker reads ``worker_connections`` but never
# enforces it, and arms no timer before a connection's first request (its keep-alive timer starts after a
# response): a client that opens connections and sends nothing, or sends a request head a byte at a time
# (slowloris), held a file descriptor of the worker for ever, until the worker could accept no one. Here:
# - past ``worker_connections`` open connections (gunicorn's setting, --worker-connections), a new one is
#   answered 503 ``gateway_busy`` with Retry-After and closed at once;
# - a connection whose first request head is not complete within REQUEST_HEAD_TIMEOUT seconds of opening
#   is closed without an answer, as nginx does at client_header_timeout (a 408 written onto a connection
#   the client may be about to reuse can be read as the answer to its next request). Later requests on a
#   kept-alive connection are bounded by gunicorn's own keep-alive timer (--keep-alive).
worker_connections = 1000
REQUEST_HEAD_TIMEOUT = float(os.environ.get("GATEWAY_REQUEST_HEAD_TIMEOUT", "10"))
_connection_made = asgi_protocol.ASGIProtocol.connection_made


def _connection_made_bounded(self: asgi_protocol.ASGIProtocol, transport: Any) -> None:
    _connection_made(self, transport)  # counts it in worker.nr_conns; connection_lost uncounts it
    if self.worker.nr_conns > self.cfg.worker_connections:
        message = "the gateway holds as many connections as it can; try again shortly"
        self._safe_write(_error_response(503, "Service Unavailable", message, (("Retry-After", "1"),)))
        self._close_transport()
        self._request_ready.set()  # the connection's task, waiting for a request, sees it closed and ends
        return
    self.worker.loop.call_later(REQUEST_HEAD_TIMEOUT, _close_without_first_request, self)


def _close_without_first_request(protocol: asgi_protocol.ASGIProtocol) -> None:
    # Still waiting for the connection's first request head (req_count counts the one being waited for).
    if protocol.req_count <= 1 and protocol._awaiting_request and not protocol._closed:
        protocol._keepalive_timeout()  # gunicorn's own idle close: closes and wakes the connection's task


asgi_protocol.ASGIProtocol.connection_made = _connection_made_bounded  # type: ignore[method-assign]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _metrics_dir() -> Path:
    from common.settings import var_dir

    root = var_dir(Path(__file__).resolve().parent) / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("gateway-*"):
        pid = stale.name.removeprefix("gateway-")
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return root / f"gateway-{os.getpid()}"


def on_starting(server: Any) -> None:
    configured = os.environ.get(MULTIPROC_ENV)
    path = Path(configured) if configured else _metrics_dir()
    # Values of a previous run would be summed with this one's: the directory starts empty.
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)


def child_exit(server: Any, worker: Any) -> None:
    # A dead worker's live gauges go; its counters and histograms stay, so totals never run backwards.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if not os.environ.get(MULTIPROC_ENV, "").endswith(f"gateway-{os.getpid()}"):
        return  # a directory the operator chose is theirs to keep
    with contextlib.suppress(OSError):
        shutil.rmtree(os.environ[MULTIPROC_ENV])
