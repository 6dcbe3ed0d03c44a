#!/usr/bin/env python3
"""What each gateway feature costs per request on the event loop, measured by switching it off.

    .venv/bin/python bench/feature_costs.py                 # Redis on REDIS_URL (default the local one)
    .venv/bin/python bench/feature_costs.py --embedded      # the SQLite rate-limit store
    .venv/bin/python bench/feature_costs.py --requests 8000 --repeat 5

bench/run.py measures whole processes under wrk; py-spy's shares of them spread a feature's cost over the
code it calls and the kernel. This takes the other way: the gateway's ASGI application (``gateway.asgi``,
as gunicorn's ASGI worker loads it) runs in this process, driven by 16 concurrent in-memory clients against
the bench upstream (``bench/upstream/``, a real process on loopback), and its CPU time per request is read
with each feature on, then with one switched off. The difference is what that feature costs where it runs,
cache misses and allocator included. gunicorn's own parsing and writing are not in these figures
(``floor-asgi`` in bench/run.py shows them).

Each variant runs in a fresh process (tracing is configured at start-up). Each round runs every variant
once, and a feature's cost is the median over the rounds of its difference to "all on" in the same
round, so that a slow spell of a shared machine weighs on both sides. Switching
a feature off replaces one function of the gateway in that process only: a measurement, never a mode of
the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import run as bench  # noqa: E402  the bench's upstream, token and gateway settings

CONCURRENT_CLIENTS = 16
# variant -> what it switches off
VARIANTS = {
    "all on": "",
    "no access log": "the JSON access line (metrics still counted)",
    "no rate limit": "the rate-limit counter and its headers",
    "no CORS": "django-cors-headers on the edge",
    "no security headers": "Django's security and clickjacking middleware on the edge",
    "no tracing": "OTEL_TRACES_SAMPLER=always_off instead of one trace in ten",
}


def measure(variant: str, *, requests: int, embedded: bool, redis_url: str) -> float:
    """In a child process: CPU µs per request of the gateway application with ``variant``."""
    work = Path(tempfile.mkdtemp(prefix="shop-feature-costs-"))
    processes = bench.Processes(log_dir=work)
    token, jwks = bench.make_token_and_jwks()
    # The upstream on one core and the gateway on the other, as far as the machine has two: sharing a core
    # with the upstream's threads would add its cache misses to the gateway's CPU time, run by run.
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        os.sched_setaffinity(0, cores[1:])  # inherited by the upstream's processes
    upstream = bench.start_upstream(processes, jwks)
    if len(cores) >= 2:
        os.sched_setaffinity(0, cores[:1])
    try:
        port = int(upstream.url.rsplit(":", 1)[1])
        extra = {"OTEL_TRACES_SAMPLER": "always_off"} if variant == "no tracing" else {}
        system = bench.manage_all.System(
            var_dir=work / "var",
            ports={"gateway": bench.free_port(), "users": port, "orders": port, "payments": port},
            base_env=bench.gateway_env("gateway" if embedded else "gateway+redis", redis_url=redis_url, extra=extra),
        )
        service = bench.manage_all.SERVICES_BY_NAME["gateway"]
        env = system.env_for(service)
        migrate = system.manage_command("migrate", "--noinput")  # the gateway's admin tables, as `up` does
        subprocess.run(migrate, cwd=service.directory, env=env, check=True, capture_output=True)  # noqa: S603
        os.environ.clear()
        os.environ.update(env)
        os.chdir(service.directory)
        sys.path.insert(0, str(service.directory))
        application = _application(variant)
        return asyncio.run(_drive(application, token, requests))
    finally:
        processes.stop_all()


def _application(variant: str) -> Any:
    import gateway.asgi
    from proxy import edge, ratelimit

    if variant == "no access log":
        import logging

        logging.getLogger("gateway.access").setLevel(logging.WARNING)
    elif variant == "no rate limit":

        async def uncounted(*args: Any, **kwargs: Any) -> None:
            return None

        ratelimit.consume_async = uncounted  # type: ignore[assignment]
    elif variant in ("no CORS", "no security headers"):
        off = (edge._cors,) if variant == "no CORS" else (edge._security, edge._clickjacking)
        edge.EDGE_LAYERS = tuple(layer for layer in edge.EDGE_LAYERS if layer not in off)
        return edge.edge_application(gateway.asgi.application, edge.ProxyApp())
    return gateway.asgi.application


async def _drive(application: Any, token: str, requests: int) -> float:
    headers = [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode()), (b"accept", b"*/*")]

    async def one() -> None:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": bench.PATH, "raw_path": bench.PATH.encode(), "query_string": b"", "root_path": "",
            "headers": list(headers), "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        messages: list[dict[str, Any]] = []
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client stays until the answer is out
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        await application(scope, receive, send)
        if messages[0]["status"] != 200:
            raise bench.BenchError(f"the gateway answered {messages[0]['status']}: {messages[1:]}")

    async def client(count: int) -> None:
        for _ in range(count):
            await one()

    await asyncio.gather(*(client(50) for _ in range(CONCURRENT_CLIENTS)))  # warm-up: pools, caches, the token cache
    started = time.process_time()
    per_client = requests // CONCURRENT_CLIENTS
    await asyncio.gather(*(client(per_client) for _ in range(CONCURRENT_CLIENTS)))
    return (time.process_time() - started) / (per_client * CONCURRENT_CLIENTS) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="timed requests per run (default 4000)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds, each running every variant once (default 5)")
    parser.add_argument("--embedded", action="store_true", help="count in SQLite instead of Redis")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # a child process measuring one variant
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, requests=args.requests, embedded=args.embedded,
                                 redis_url=args.redis_url)))  # fmt: skip
        return 0
    if not args.embedded and not bench.redis_reachable(args.redis_url):
        print(f"Redis is not reachable at {args.redis_url}: pass --embedded, or --redis-url", file=sys.stderr)
        return 1
    runs: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    names = list(VARIANTS)
    for round_number in range(1, args.repeat + 1):
        # Each round starts one variant later, so that none is always the one run after a pause or first.
        shift = (round_number - 1) % len(names)
        for variant in names[shift:] + names[:shift]:
            command = [sys.executable, __file__, "--variant", variant, "--requests", str(args.requests),
                       "--redis-url", args.redis_url, *(["--embedded"] if args.embedded else [])]  # fmt: skip
            # The gateway's log lines (an access line per request) go to a file, as under the launcher.
            with tempfile.TemporaryFile() as log:
                result = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, check=False)  # noqa: S603
                if result.returncode != 0:
                    log.seek(0)
                    print(f"{variant}: failed\n{log.read()[-3000:].decode(errors='replace')}", file=sys.stderr)
                    return 1
            cpu = float(result.stdout.strip().splitlines()[-1])
            runs[variant].append(cpu)
            print(f"run {round_number}/{args.repeat}  {variant:<20} {cpu:6.0f} µs CPU per request", flush=True)
    # A feature's cost within each round (its runs are minutes apart at most, so a slow spell of the
    # machine weighs on both sides of the difference), then the median over the rounds.
    print(f"\n{'variant':<20} {'fastest µs/req':>14} {'feature costs':>14}  switched off")
    for variant, what in VARIANTS.items():
        costs = [everything - cpu for everything, cpu in zip(runs["all on"], runs[variant], strict=True)]
        cost = "" if variant == "all on" else f"{statistics.median(costs):+.0f}"
        print(f"{variant:<20} {min(runs[variant]):14.0f} {cost:>14}  {what}")
    print("(a feature's cost: the median over the rounds of 'all on' minus its row in the same round)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
