#!/usr/bin/env python3
"""Gateway benchmark: our gateway against calling the service directly and against the seed design's
Express + http-proxy gateway, on loopback, bounded in time. Run on demand (not part of the test suite):

    .venv/bin/python bench/run.py                      # defaults: 5 s runs at 16 and 64 connections, twice
    .venv/bin/python bench/run.py --duration 10 --repeat 3 --connections 1,16,64
    .venv/bin/python bench/run.py --profile            # then sample the gateway's workers with py-spy

It starts, each on a free 127.0.0.1 port:
- ``direct``: a trivial DRF JSON service (``bench/upstream/``) under ``gunicorn -w 2 -k gthread
  --threads 8 --keep-alive 75``; it also serves the JWKS of a key generated for this run;
- ``gateway`` (embedded) and ``gateway+redis`` (``REDIS_URL`` on the local Redis): our gateway started by
  the launcher's own ``System.web_command`` (the same gunicorn worker class, workers and flags as ``up``),
  routing every service to that upstream, with a valid EdDSA access token on every request (the route
  requires one), and whatever rate limiting, breaker and access logging the gateway has switched on;
- ``express`` and ``express+ka``: ``bench/express_gateway.js`` (Express 5 + http-proxy) in its seed
  form (a new upstream connection per request) and with a keep-alive agent.
- ``floor-wsgi`` and ``floor-asgi`` (``bench/floors/``): forwarders with no feature at all, under gunicorn's
  gthread worker with ``http.client`` and under its ASGI worker with httptools connections: what the
  server and client alone cost, below any gateway feature.

Each target gets the same wrk load (``GET /api/v1/orders/`` with the same ``Authorization`` header),
a warm-up, then timed runs in alternating order. It prints req/s, p50/p99 latency and CPU per request of
the proxy and the upstream, then the ratios against the issue's targets. Everything it starts is stopped
on exit, Ctrl-C and errors. Absolute numbers swing between runs on a shared machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
import manage_all  # noqa: E402  the launcher is stdlib-only; it is how the gateway is started for real

HOST = "127.0.0.1"
PATH = "/api/v1/orders/"  # a route that requires a signed-in user, so every request verifies a token
JWT_ISSUER = "bench-users"
JWT_AUDIENCE = "bench-api"
TARGETS = ("direct", "gateway", "gateway+redis", "express", "express+ka", "floor-wsgi", "floor-asgi")
# Not gateways: the cost of a server and an HTTP client alone, forwarding with no feature (bench/floors/).
FLOORS = ("floor-wsgi", "floor-asgi")
GATEWAYS = ("gateway", "gateway+redis")
# The issue's targets, with authentication, rate limiting, breaker and access logs all on.
MIN_RATIO_DIRECT = 0.5
MIN_RATIO_EXPRESS = 1.2
MAX_ADDED_P50_MS = 2.0


class BenchError(Exception):
    """A problem reported as one line (what to install, which process died and its log)."""


# --------------------------------------------------------------------------------------------------
# Processes


@dataclass
class Started:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Processes:
    """What the bench started; each in its own session, so its CPU time can be summed by session id and
    the whole group killed if it does not stop."""

    log_dir: Path
    started: list[Started] = field(default_factory=list)

    def spawn(self, name: str, command: list[str], *, cwd: Path, env: dict[str, str]) -> Started:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            popen = subprocess.Popen(  # noqa: S603  our own programs, arguments built here
                command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        process = Started(name=name, popen=popen, log_path=log_path)
        self.started.append(process)
        return process

    def check_alive(self) -> None:
        for process in self.started:
            if process.popen.poll() is not None:
                raise BenchError(
                    f"{process.name} exited with code {process.popen.returncode}; its log:\n{process.log_tail()}"
                )

    def stop_all(self) -> None:
        """Newest first: the proxies close their pooled connections before the upstream is asked to stop,
        which it then does at once instead of waiting for idle keep-alive connections."""
        for process in reversed(self.started):
            if process.popen.poll() is None:
                manage_all.stop_processes([(process.name, process.popen.pid)], timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=1)
        self.started.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310  our loopback URL
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def wait_until_answering(processes: Processes, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        processes.check_alive()
        with contextlib.suppress(OSError):
            http_get(url, timeout=2)
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{url} did not answer within {timeout:.0f}s")
        time.sleep(0.2)


def children_cpu_seconds() -> float:
    """CPU of the bench's own finished children (wrk, once it has been waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def session_cpu_seconds(session_id: int) -> float:
    """User + system CPU of every live process in a session (a gunicorn master and its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state ppid pgrp session ...
        if int(fields[3]) == session_id:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


# --------------------------------------------------------------------------------------------------
# The token and the upstream's JWKS


def make_token_and_jwks() -> tuple[str, dict[str, Any]]:
    """A valid access token as the user service issues it, and the JWK set that verifies it."""
    import base64

    import jwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    kid = "bench-key"
    jwks = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig", "alg": "EdDSA"}]}
    now = int(time.time())
    claims = {
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "sub": "1",
        "iat": now,
        "exp": now + 3600,
        "jti": "bench",
        "typ": "access",
        "staff": False,
    }
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "JWT"})
    return token, jwks


# --------------------------------------------------------------------------------------------------
# Starting the targets


@dataclass
class Target:
    name: str
    url: str  # base URL
    session_id: int  # for CPU accounting
    note: str = ""


def clean_env() -> dict[str, str]:
    """The caller's environment without anything that would point a service at the caller's own data."""
    env = dict(os.environ)
    for name in list(env):
        if name.endswith(("DATABASE_URL", "SERVICE_URL")) or name in ("REDIS_URL", "BROKER_URL", "VAR_DIR"):
            env.pop(name)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_upstream(processes: Processes, jwks: dict[str, Any]) -> Target:
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "bench_upstream.wsgi:application",
        "--bind", f"{HOST}:{port}", "--workers", "2", "--worker-class", "gthread", "--threads", "8",
        # Longer than any proxy keeps an idle pooled connection: the upstream never closes one mid-reuse.
        "--keep-alive", "75", "--graceful-timeout", "5", "--no-control-socket", "--name", "bench-upstream",
    ]  # fmt: skip
    env = {**clean_env(), "BENCH_JWKS": json.dumps(jwks)}
    process = processes.spawn("upstream", command, cwd=BENCH_DIR / "upstream", env=env)
    url = f"http://{HOST}:{port}"
    wait_until_answering(processes, url + "/health/")
    return Target("direct", url, process.popen.pid)


def gateway_env(variant: str, *, redis_url: str, extra: dict[str, str]) -> dict[str, str]:
    """Everything on: JWT verification (the route requires it), access logs at INFO, and the gateway's
    rate limiting and breaker with limits far above the bench's rate, so every request is forwarded and
    the features still do their per-request work. ``gateway+redis`` puts the shared state in Redis."""
    env = clean_env()
    env.update(
        {
            "ENVIRONMENT": "development",
            "SECRET_KEY": "bench-gateway-secret-key-not-secret-0123456789",
            "INTERNAL_AUTH_SECRET": "bench-internal-auth-secret-not-secret-0123456789",
            "JWT_ISSUER": JWT_ISSUER,
            "JWT_AUDIENCE": JWT_AUDIENCE,
            "LOG_LEVEL": "INFO",
            "DEBUG": "false",
            # Far above what the bench can send, so every request is counted (one store round trip) and
            # forwarded; a 429 during a run is counted as an error and invalidates it.
            "RATE_LIMIT_DEFAULT": "1000000000/minute",
            # Tracing as in production (README: OTEL_TRACES_SAMPLER): every request gets a trace id and the
            # gateway decides, once, whether its trace is recorded; one in ten is. Recording every trace
            # (the launcher's default, for development) costs the gateway ≈ 150-200 µs of CPU per request:
            # --gateway-env OTEL_TRACES_SAMPLER=parentbased_always_on measures that.
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        }
    )
    if variant == "gateway+redis":
        # The shared local Redis: a DB number and key prefixes of the bench's own, nothing else touched.
        env["REDIS_URL"] = redis_url
        env["RATE_LIMIT_KEY_PREFIX"] = f"bench-{os.getpid()}:ratelimit"
        env["BREAKER_REDIS_PREFIX"] = f"bench-{os.getpid()}:breaker"
    env.update(extra)
    return env


def start_gateway(
    processes: Processes, variant: str, *, upstream: Target, var_dir: Path, redis_url: str, extra: dict[str, str]
) -> Target:
    """Our gateway exactly as ``manage_all.py up`` runs it, every service pointed at the bench upstream."""
    upstream_port = int(upstream.url.rsplit(":", 1)[1])
    port = free_port()
    system = manage_all.System(
        var_dir=var_dir,
        ports={"gateway": port, "users": upstream_port, "orders": upstream_port, "payments": upstream_port},
        base_env=gateway_env(variant, redis_url=redis_url, extra=extra),
    )
    service = manage_all.SERVICES_BY_NAME["gateway"]
    env = system.env_for(service)
    for args in service.prepare:  # migrate: the gateway's admin tables, as `up` does
        result = subprocess.run(  # noqa: S603  the project's own manage.py
            system.manage_command(*args), cwd=service.directory, env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BenchError(f"gateway: manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    name = variant.replace("+", "-")
    command = system.web_command(service)
    process = processes.spawn(name, command, cwd=service.directory, env=env)
    url = system.url("gateway")
    wait_until_answering(processes, url + "/health")
    # read from the command, so that the note says what ran (the ASGI worker takes no --threads)
    note = f"workers={system.web_workers} worker={command[command.index('--worker-class') + 1]}"
    if "--threads" in command:
        note += f" threads={command[command.index('--threads') + 1]}"
    return Target(variant, url, process.popen.pid, note=note)


def ensure_node_modules() -> None:
    if (BENCH_DIR / "node_modules" / "express").is_dir() and (BENCH_DIR / "node_modules" / "http-proxy").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise BenchError("npm is needed for the Express reference (or leave it out: --targets direct,gateway)")
    print("installing the Express reference into bench/node_modules (npm ci)", flush=True)
    result = subprocess.run(  # noqa: S603
        [npm, "ci", "--no-audit", "--no-fund"], cwd=BENCH_DIR, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"npm ci failed:\n{result.stdout}{result.stderr}")


def start_express(processes: Processes, variant: str, *, upstream: Target) -> Target:
    node = shutil.which("node")
    if node is None:
        raise BenchError("node is needed for the Express reference")
    port = free_port()
    env = {
        **clean_env(),
        "BENCH_PORT": str(port),
        "BENCH_TARGET": upstream.url,
        "BENCH_KEEPALIVE": "1" if variant == "express+ka" else "0",
        "NODE_ENV": "production",
    }
    name = variant.replace("+", "-")
    process = processes.spawn(name, [node, str(BENCH_DIR / "express_gateway.js")], cwd=BENCH_DIR, env=env)
    url = f"http://{HOST}:{port}"
    wait_until_answering(processes, url + "/health/")
    note = "keep-alive agent" if variant == "express+ka" else "seed form: Connection: close upstream"
    return Target(variant, url, process.popen.pid, note=note)


def start_floor(processes: Processes, variant: str, *, upstream: Target) -> Target:
    """A forwarder with no feature at all, under gunicorn with two workers: ``floor-wsgi`` the
    gthread worker with ``http.client`` (the gateway's former server and client), ``floor-asgi`` gunicorn's
    ASGI worker with asyncio connections parsed by httptools. The gap between a floor and the gateway is
    what the gateway's features cost; the gap between the floors, what the architecture does."""
    port = free_port()
    if variant == "floor-wsgi":
        app, worker = "wsgi_floor:application", ["--worker-class", "gthread", "--threads", "8"]
    else:
        app, worker = "asgi_floor:app", ["--worker-class", "asgi"]
    command = [
        sys.executable, "-m", "gunicorn", app, "--bind", f"{HOST}:{port}", "--workers", "2", *worker,
        "--keep-alive", "75", "--graceful-timeout", "5", "--no-control-socket", "--name", f"bench-{variant}",
    ]  # fmt: skip
    env = {**clean_env(), "BENCH_TARGET": upstream.url}
    process = processes.spawn(variant, command, cwd=BENCH_DIR / "floors", env=env)
    url = f"http://{HOST}:{port}"
    wait_until_answering(processes, url + "/health/")
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "gunicorn_h1c" if importlib.util.find_spec("gunicorn_h1c") else "python"
    asgi = f"asgi worker ({loop}, {parser} parser), httptools"
    note = "gthread x 8, http.client" if variant == "floor-wsgi" else asgi
    return Target(variant, url, process.popen.pid, note=note)


def redis_reachable(redis_url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    try:
        with socket.create_connection((parts.hostname or HOST, parts.port or 6379), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# Checks that the gateway under test really does its work


def describe_gateway(target: Target, token: str, log_path: Path) -> list[str]:
    """One request with the token, one without: what is switched on, as seen from outside."""
    lines: list[str] = []
    before = log_path.stat().st_size if log_path.exists() else 0
    status, headers, body = http_get(target.url + PATH, {"Authorization": f"Bearer {token}"})
    if status != 200 or b'"results"' not in body:
        raise BenchError(f"{target.name}: GET {PATH} with the token answered {status}: {body[:300]!r}")
    anonymous, _, _ = http_get(target.url + PATH)
    lowered = {name.lower(): value for name, value in headers.items()}
    lines.append(f"authentication: {'on' if anonymous == 401 else f'OFF? (no token -> {anonymous})'}")
    policy = lowered.get("ratelimit-policy")
    lines.append(f"rate limiting: {'on, RateLimit-Policy: ' + policy if policy else 'no RateLimit headers'}")
    time.sleep(0.3)
    logged = log_path.read_bytes()[before:] if log_path.exists() else b""
    access_lines = [line for line in logged.splitlines() if PATH.encode() in line]
    lines.append(f"access log: {'on' if access_lines else 'no line for the request?'}")
    if access_lines:
        lines.append(f"  e.g. {access_lines[0].decode(errors='replace')[:200]}")
    status, _, body = http_get(target.url + "/health")
    with contextlib.suppress(ValueError):
        document = json.loads(body)
        extra = sorted(set(document) - {"status", "gateway", "services", "down"})
        if extra:
            lines.append(f"/health also reports: {', '.join(extra)}")
    return lines


# --------------------------------------------------------------------------------------------------
# Load


WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Sample:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors and non-2xx/3xx answers
    proxy_cpu_us: float  # per request, whole process tree
    upstream_cpu_us: float
    wrk_cpu_us: float


def run_wrk(
    wrk: str, script: Path, target: Target, upstream: Target, *, connections: int, duration: float, token: str
) -> Sample:
    threads = max(1, min(2, connections))
    command = [
        wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "--timeout", "5s",
        "-s", str(script), "-H", f"Authorization: Bearer {token}", target.url + PATH,
    ]  # fmt: skip
    proxy_before = session_cpu_seconds(target.session_id)
    upstream_before = session_cpu_seconds(upstream.session_id)
    wrk_before = children_cpu_seconds()
    result = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, check=False, timeout=duration + 30
    )
    wrk_cpu = children_cpu_seconds() - wrk_before
    proxy_cpu = session_cpu_seconds(target.session_id) - proxy_before
    upstream_cpu = session_cpu_seconds(upstream.session_id) - upstream_before
    marker = next((line for line in result.stdout.splitlines() if line.startswith("BENCH_RESULT ")), None)
    if result.returncode != 0 or marker is None:
        raise BenchError(f"wrk failed on {target.name}:\n{result.stdout}{result.stderr}")
    data = json.loads(marker.removeprefix("BENCH_RESULT "))
    requests = max(1, data["requests"])
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    is_direct = target.session_id == upstream.session_id
    return Sample(
        target=target.name,
        connections=connections,
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
        proxy_cpu_us=0.0 if is_direct else proxy_cpu / requests * 1e6,
        upstream_cpu_us=upstream_cpu / requests * 1e6,
        wrk_cpu_us=wrk_cpu / requests * 1e6,
    )


# --------------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Summary:
    target: str
    connections: int
    rps: float
    rps_spread: float  # half the range across repetitions, as a fraction of the mean
    p50_ms: float
    p99_ms: float
    errors: int
    proxy_cpu_us: float
    upstream_cpu_us: float
    wrk_cpu_us: float

    @property
    def total_cpu_us(self) -> float:
        """Everything one request costs the machine: the proxy, the upstream and the load generator."""
        return self.proxy_cpu_us + self.upstream_cpu_us + self.wrk_cpu_us


def summarise(samples: list[Sample]) -> dict[tuple[str, int], Summary]:
    groups: dict[tuple[str, int], list[Sample]] = {}
    for sample in samples:
        groups.setdefault((sample.target, sample.connections), []).append(sample)
    summaries = {}
    for key, group in groups.items():
        rps = [s.rps for s in group]
        mean_rps = statistics.fmean(rps)
        summaries[key] = Summary(
            target=key[0],
            connections=key[1],
            rps=mean_rps,
            rps_spread=(max(rps) - min(rps)) / 2 / mean_rps if mean_rps else 0.0,
            p50_ms=statistics.median(s.p50_ms for s in group),
            p99_ms=statistics.median(s.p99_ms for s in group),
            errors=sum(s.errors for s in group),
            proxy_cpu_us=statistics.fmean(s.proxy_cpu_us for s in group),
            upstream_cpu_us=statistics.fmean(s.upstream_cpu_us for s in group),
            wrk_cpu_us=statistics.fmean(s.wrk_cpu_us for s in group),
        )
    return summaries


def print_table(summaries: dict[tuple[str, int], Summary], targets: list[Target], connections: list[int]) -> None:
    print()
    header = (
        f"{'target':<15}{'conns':>6}{'req/s':>9}{'±':>6}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
        f"{'CPU µs/req: proxy':>19}{'upstream':>10}{'wrk':>6}{'x direct':>10}{'CPU model':>11}"
    )
    print(header)
    print("-" * len(header))
    for c in connections:
        direct = summaries.get(("direct", c))
        for target in targets:
            s = summaries.get((target.name, c))
            if s is None:
                continue
            ratio = f"{s.rps / direct.rps:.2f}" if direct else "-"
            model = f"{direct.total_cpu_us / s.total_cpu_us:.2f}" if direct else "-"
            proxy_cpu = f"{s.proxy_cpu_us:.0f}" if target.name != "direct" else "-"
            print(
                f"{s.target:<15}{c:>6}{s.rps:>9.0f}{s.rps_spread * 100:>5.0f}%{s.p50_ms:>9.2f}{s.p99_ms:>9.2f}"
                f"{s.errors:>7}{proxy_cpu:>19}{s.upstream_cpu_us:>10.0f}{s.wrk_cpu_us:>6.0f}{ratio:>10}{model:>11}"
            )
    print(
        "± is half the range of req/s across repetitions. CPU is user + system time of each process tree per\n"
        "request. 'CPU model' is the throughput ratio to direct that the CPU per request predicts when the\n"
        "cores are the limit (direct's proxy+upstream+wrk CPU ÷ this target's): it is less sensitive than\n"
        "req/s to other work on the machine, so compare it with 'x direct' when the two disagree."
    )


def verdicts(summaries: dict[tuple[str, int], Summary], connections: list[int], gateways: list[str]) -> list[str]:
    lines = []
    met_all = True
    for gateway in gateways:
        lines.append(f"{gateway}:")
        for c in connections:
            s = summaries.get((gateway, c))
            direct = summaries.get(("direct", c))
            express = summaries.get(("express", c))
            express_ka = summaries.get(("express+ka", c))
            if s is None or direct is None:
                continue
            ratio = s.rps / direct.rps
            ok = ratio >= MIN_RATIO_DIRECT
            met_all &= ok
            text = f"  c{c}: ÷ direct {ratio:.2f} (target ≥ {MIN_RATIO_DIRECT}: {'met' if ok else 'NOT met'})"
            if express:
                ratio_express = s.rps / express.rps
                ok = ratio_express >= MIN_RATIO_EXPRESS
                met_all &= ok
                text += f"; ÷ express {ratio_express:.2f} (target ≥ {MIN_RATIO_EXPRESS}: {'met' if ok else 'NOT met'})"
            if express_ka:
                text += f"; ÷ express+ka {s.rps / express_ka.rps:.2f}"
            lines.append(text)
            model = f"  c{c}: CPU model: ÷ direct {direct.total_cpu_us / s.total_cpu_us:.2f}"
            if express:
                model += f"; ÷ express {express.total_cpu_us / s.total_cpu_us:.2f}"
            if express_ka:
                model += f"; ÷ express+ka {express_ka.total_cpu_us / s.total_cpu_us:.2f}"
            lines.append(model)
            added = s.p50_ms - direct.p50_ms
            if c == 16:
                ok = added < MAX_ADDED_P50_MS
                met_all &= ok
                lines.append(
                    f"  c16: added p50 {added:+.2f} ms vs direct (target < {MAX_ADDED_P50_MS} ms: "
                    f"{'met' if ok else 'NOT met'})"
                )
            elif c == 1:
                lines.append(f"  c1: added p50 {added:+.2f} ms vs direct (unloaded: the gateway's own latency)")
        if any(summaries[(gateway, c)].errors for c in connections if (gateway, c) in summaries):
            met_all = False
            lines.append("  ERRORS or non-2xx answers during the runs: the figures above are not valid")
    if not gateways:
        lines.append("no gateway measured: nothing to hold to the targets")
    else:
        lines.append("all targets met" if met_all else "some targets NOT met")
    return lines


# --------------------------------------------------------------------------------------------------
# Profiling (optional): py-spy over the gateway's workers under the c16 load


def profile_gateway(
    py_spy: str, wrk: str, script: Path, target: Target, upstream: Target, *, duration: float, token: str, out: Path
) -> None:
    """Sample whichever gateway thread holds the GIL (py-spy --gil), i.e. where the workers' Python CPU
    goes, while wrk drives it at 16 connections. Wall-clock samples would mostly show threads waiting
    to get the GIL back after a socket call, which says nothing about cost."""
    print(f"\nprofiling {target.name} with py-spy for {duration:g}s at 16 connections (not counted above)")
    raw = out / f"{target.name.replace('+', '-')}.pyspy.txt"
    rate = 500
    spy = subprocess.Popen(  # noqa: S603
        [py_spy, "record", "--pid", str(target.session_id), "--subprocesses", "--gil", "--format", "raw",
         "--rate", str(rate), "--nonblocking", "--duration", f"{duration:g}", "--output", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1)  # py-spy attaches
        sample = run_wrk(wrk, script, target, upstream, connections=16, duration=duration - 2, token=token)
        spy.wait(timeout=duration + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
    if not raw.exists():
        print("py-spy wrote no profile (is ptrace allowed here?)")
        return
    print(f"{sample.rps:.0f} req/s while sampled (py-spy itself takes CPU)")
    for line in top_costs(raw, cpu_us=sample.proxy_cpu_us):
        print(line)
    print(f"(collapsed stacks in {raw}; e.g. feed them to flamegraph.pl or speedscope)")


# Parts of a proxied request, by the function that does each (inclusive of what it calls); a part whose
# function the gateway no longer has is simply not shown. "outside ..." rows are differences.
BREAKDOWN: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "gunicorn and the event loop: parse requests, write answers, wake tasks",
        "BaseEventLoop.run_forever",
        ("edge_application.<locals>.application", "_SelectorSocketTransport._read_ready__data_received"),
    ),
    ("edge application outside the proxy view", "ProxyApp.__call__", ("proxy_view_async",)),
    ("  of which the gateway's server span", "_start_server_span", ()),
    ("  of which the WSGI environ and request object", "environ_from", ()),
    ("  of which the access log and metrics", "log_and_count", ()),
    ("  of which sending the answer", "_send_response", ()),
    ("proxy view", "proxy_view_async", ()),
    ("  token check", "_authenticate", ()),
    ("  rate limit", "consume", ()),
    ("  service assertion (HS256)", "mint_assertion", ()),
    ("  request headers filtered", "forwarded_request_headers", ()),
    ("  upstream call (until the response headers)", "send", ()),
    ("    of which the client span", "_attempt", ("request",)),
    ("  response headers filtered", "returned_response_headers", ()),
    (
        "bytes arriving: requests parsed by gunicorn, answers by llhttp",
        "_SelectorSocketTransport._read_ready__data_received",
        (),
    ),
    ("span export (the exporter's thread)", "BatchProcessor.worker", ()),
)


def top_costs(raw: Path, *, cpu_us: float, limit: int = 30) -> Iterator[str]:
    """Where the gateway's Python time goes, from py-spy's collapsed GIL-holder stacks: each function's
    share of the samples, and that share of the measured CPU per request in µs (an estimate: kernel time
    for the sockets is spread over the Python code that made the calls)."""
    inclusive: Counter[str] = Counter()
    by_name: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        count = int(count_text)
        total += count
        for name in {short_frame(frame) for frame in frames}:
            inclusive[name] += count
        for name in {frame.partition(" (")[0] for frame in frames}:
            by_name[name] += count
        if frames:
            own[short_frame(frames[-1])] += count
    if not total:
        yield "no samples"
        return

    def row(label: str, count: int) -> str:
        return f"  {count / total * 100:5.1f}%  ≈{count / total * cpu_us:6.0f} µs  {label}"

    yield f"{total} samples; share of the gateway's Python time and of its {cpu_us:.0f} µs CPU per request:"
    for label, function, minus in BREAKDOWN:
        if by_name[function]:
            yield row(label, by_name[function] - sum(by_name[name] for name in minus))
    yield "inclusive, top functions below the request handler:"
    handler = by_name["BaseEventLoop.run_forever"] or total
    shown = 0
    for name, count in inclusive.most_common():
        if count < handler * 0.9 and shown < limit:  # skip the frames every request passes through
            yield row(name, count)
            shown += 1
    yield "self (the function's own code):"
    for name, count in own.most_common(limit):
        yield row(name, count)


def short_frame(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``: lines merged, paths shortened."""
    name, _, location = frame.partition(" (")
    location = location.rstrip(")")
    file = location.rsplit(":", 1)[0]
    parts = Path(file).parts
    short = "/".join(parts[-2:]) if parts else file
    return f"{name} ({short})"


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per timed run (default 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target and load")
    parser.add_argument("--connections", default="16,64", help="comma-separated loads (default 16,64)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per target and load (default 2)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/14", help="Redis for gateway+redis (a DB of its own)"
    )
    parser.add_argument(
        "--gateway-env", action="append", default=[], metavar="NAME=VALUE", help="extra gateway setting"
    )
    parser.add_argument("--profile", action="store_true", help="afterwards, sample the gateway with py-spy")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "", help="py-spy executable")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (path printed)")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.gateway_env):
        parser.error("--gateway-env takes NAME=VALUE")
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if "direct" not in args.targets:
        args.targets.insert(0, "direct")
    return args


def ensure_venv_python() -> None:
    """The gateway and upstream run on this interpreter (as the launcher's own do): use the project's venv."""
    if Path(sys.prefix).resolve() != manage_all.VENV.resolve() and manage_all.VENV_PYTHON.exists():
        interpreter = str(manage_all.VENV_PYTHON)
        os.execv(interpreter, [interpreter, str(Path(__file__).resolve()), *sys.argv[1:]])  # noqa: S606


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ensure_venv_python()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  progress shows as it happens
    wrk = shutil.which("wrk")
    if wrk is None:
        print("error: wrk is needed (Debian/Ubuntu: apt-get install wrk; macOS: brew install wrk)", file=sys.stderr)
        return 1
    if args.profile and not args.py_spy:
        print("error: --profile needs py-spy (pip install py-spy; or pass --py-spy PATH)", file=sys.stderr)
        return 1
    extra_env = dict(item.split("=", 1) for item in args.gateway_env)
    manage_all.stop_on_signals()  # SIGTERM as well as Ctrl-C ends in the finally below
    work = Path(tempfile.mkdtemp(prefix="shop-bench-"))
    processes = Processes(log_dir=work)
    started_at = time.monotonic()
    try:
        token, jwks = make_token_and_jwks()
        script = work / "report.lua"
        script.write_text(WRK_SCRIPT)
        upstream = start_upstream(processes, jwks)
        targets = [upstream]
        for name in args.targets:
            if name in GATEWAYS:
                if name == "gateway+redis" and not redis_reachable(args.redis_url):
                    print(f"skipping {name}: no Redis answers at {args.redis_url}")
                    continue
                targets.append(
                    start_gateway(
                        processes,
                        name,
                        upstream=upstream,
                        var_dir=work / f"var-{name.replace('+', '-')}",
                        redis_url=args.redis_url,
                        extra=extra_env,
                    )
                )
            elif name.startswith("express"):
                ensure_node_modules()
                targets.append(start_express(processes, name, upstream=upstream))
            elif name in FLOORS:
                targets.append(start_floor(processes, name, upstream=upstream))
        print(f"started in {time.monotonic() - started_at:.1f}s; logs in {work}")
        for target in targets:
            print(f"  {target.name:<15}{target.url:<26}{target.note}")
            if target.name in GATEWAYS:
                log_path = work / f"{target.name.replace('+', '-')}.log"
                for line in describe_gateway(target, token, log_path):
                    print(f"      {line}")

        samples: list[Sample] = []
        warmed: set[tuple[str, int]] = set()
        for repetition in range(args.repeat):
            for c in args.connections:
                # Alternate the order so that drift (heat, other load on the machine) favours no target.
                order = targets if (repetition + args.connections.index(c)) % 2 == 0 else targets[::-1]
                for target in order:
                    processes.check_alive()
                    if (target.name, c) not in warmed and args.warmup > 0:
                        run_wrk(wrk, script, target, upstream, connections=c, duration=args.warmup, token=token)
                        warmed.add((target.name, c))
                    sample = run_wrk(wrk, script, target, upstream, connections=c, duration=args.duration, token=token)
                    samples.append(sample)
                    print(
                        f"  run {repetition + 1}/{args.repeat} c{c:<3} {target.name:<15}{sample.rps:>8.0f} req/s "
                        f"p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms  errors {sample.errors}",
                        flush=True,
                    )
        summaries = summarise(samples)
        print_table(summaries, targets, args.connections)
        print()
        print("targets: ≥ 0.5 x direct, ≥ 1.2 x express (seed form), < 2 ms added p50 at 16 connections")
        for line in verdicts(summaries, args.connections, [t.name for t in targets if t.name in GATEWAYS]):
            print(line)
        if args.profile:
            for target in targets:
                if target.name in GATEWAYS:
                    seconds = max(args.duration, 8)
                    profile_gateway(args.py_spy, wrk, script, target, upstream, duration=seconds, token=token, out=work)
        print(f"\ntotal time {time.monotonic() - started_at:.0f}s")
        return 0
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; stopping", file=sys.stderr)
        return 130
    finally:
        # Whatever happened, nothing the bench started outlives it.
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            processes.stop_all()
        if not (args.keep_logs or args.profile):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
