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
import uuid
from pathlib import Path
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# A header name with an underscore is refused (400), not dropped (gunicorn's default) or mapped: WSGI
# would make "X_User_Id" and "X-User-Id" one key, and a silently dropped header hides an attack.
header_map = "refuse"

# The gateway faces clients: no peer, loopback included (gunicorn's default trusts 127.0.0.1 and ::1), may
# set the scheme (X-Forwarded-Proto and the like) or SCRIPT_NAME gunicorn gives the application. Behind
# proxies of ours the gateway reads X-Forwarded-Proto itself, by TRUSTED_PROXY_COUNT
# (proxy/client_address.py). The launcher passes the same on its command line; this covers any other run.
forwarded_allow_ips = ""

# Requests gunicorn's parser refuses (the underscore above, a duplicate Content-Length, Content-Length with
# Transfer-Encoding, a bad request line, an oversized header line) never reach Django, so gunicorn answers
# them itself, in HTML. The gateway's clients expect the error envelope every other answer uses: gunicorn's
# one function for these pages is replaced here, in the master, so that every worker forked from it has
# it. Its message names what was wrong (e.g. "Invalid HTTP header name: 'X_User_Id'") and is JSON-escaped.
_CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed"}
_CODES |= {431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}


def _json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    code = _CODES.get(status_int, "bad_request")
    if status_int == 400 and "header name" in mesg.lower():
        code = "invalid_header_name"
    elif status_int == 400 and "header" in mesg.lower():
        code = "invalid_header"
    request_id = uuid.uuid4().hex
    body = json.dumps(
        {"error": {"code": code, "message": f"{reason}: {mesg}", "details": {}}},
        ensure_ascii=True,
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Request-ID: {request_id}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = _json_error

# An application's "Connection: close" is dropped by gunicorn with the other hop-by-hop headers, and the
# connection kept alive (gunicorn 27: Response.process_headers). The gateway says it when it refused a body
# it has not read (proxy/views.py: 413, a body it cannot frame): kept alive, the worker would read and
# discard the rest of that body, for as long as the client sends it, before the next request. Honoured
# here, in the master, so every worker has it: gunicorn then writes "Connection: close" itself and closes
# the connection after the response (gracefully, so the client still gets the answer).
_process_headers = wsgi.Response.process_headers


def _process_headers_honouring_close(self: wsgi.Response, headers: list[tuple[str, str]]) -> None:
    _process_headers(self, headers)
    for name, value in headers:
        if name.lower() == "connection" and "close" in (token.strip().lower() for token in value.split(",")):
            self.force_close()


wsgi.Response.process_headers = _process_headers_honouring_close  # type: ignore[method-assign]


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
