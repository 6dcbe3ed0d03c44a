"""The config center against a real gunicorn gateway with two worker processes: a saved version reaches
every worker within the stated bound, and a worker keeps the last good version while the config center's
database cannot be read. Rate-limit policies read through it, so the RateLimit-Policy header shows which
version a worker used."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from proxy.tests.test_gunicorn import PROJECT_DIR
from proxy.tests.test_ratelimit import Gateway, rate_limit_headers, running_gateway
from proxy.tests.upstream_stub import StubUpstream

POLL_INTERVAL = 1.0  # CONFIG_POLL_INTERVAL
# The bound: a worker polls the version marker every POLL_INTERVAL and loads a new version at once (one
# query of milliseconds). The slack covers a loaded 2-core CI machine descheduling the poller thread.
BOUND = POLL_INTERVAL + 1.0


# One Django process for the whole test (each start costs seconds on a busy machine): it migrates the
# gateway's database, then saves each rate it reads on stdin as a new version through the config center's
# service, and prints the time the version committed.
EDITOR = """
import sys, time
import django
django.setup()
from django.core.management import call_command
from configcenter.services import save_version
call_command("migrate", verbosity=0)
for line in sys.stdin:
    save_version(service="gateway", profile="default", values={"ratelimit.default": line.strip()}, author="test")
    print(time.time(), flush=True)
"""


@contextmanager
def config_editor(var_dir: Path) -> Iterator[Callable[[str], float]]:
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="gateway.settings",
        VAR_DIR=str(var_dir),
        SECRET_KEY=settings.SECRET_KEY,
        INTERNAL_AUTH_SECRET=settings.INTERNAL_AUTH_SECRET,
        LOG_LEVEL="WARNING",
    )
    process = subprocess.Popen(  # noqa: S603 (our own command line)
        [sys.executable, "-c", EDITOR], cwd=PROJECT_DIR, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdin
    assert process.stdout

    def set_rate(rate: str) -> float:
        process.stdin.write(rate + "\n")  # type: ignore[union-attr]
        process.stdin.flush()  # type: ignore[union-attr]
        line = process.stdout.readline()  # type: ignore[union-attr]
        assert line, "the config editor died"
        return float(line)

    try:
        yield set_rate
    finally:
        process.stdin.close()
        process.wait(timeout=10)


def served_by(var_dir: Path) -> dict[str, str]:
    """path -> pid of the worker that answered it (the access log's ``%(p)s %(s)s %(U)s``)."""
    lines = (var_dir / "access.log").read_text().splitlines()
    return {line.split()[2]: line.split()[0] for line in lines if len(line.split()) == 3}


def quota(gateway: Gateway, path: str) -> int:
    status, headers, body = gateway.request("GET", path)
    assert headers["RateLimit-Policy"], (status, body, gateway.log()[-3000:])
    return int(rate_limit_headers(headers)[0]["q"])


def test_a_saved_version_reaches_every_worker_within_the_bound_and_survives_an_unreadable_center(
    stubs: dict[str, StubUpstream], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    with config_editor(tmp_path) as set_rate:
        set_rate("50/minute")  # before the gateway starts: each worker loads the current version as it boots
        with running_gateway(
            stubs, tmp_path, RATE_LIMIT_DEFAULT="100/minute", CONFIG_POLL_INTERVAL=str(POLL_INTERVAL)
        ) as gateway:
            # given both workers serving version 1 (the settings' 100/minute is only the default)
            # (until both have answered: on a busy machine the second worker can still be booting for a while)
            warm_until = time.monotonic() + 20
            for index in itertools.count():
                assert quota(gateway, f"/api/v1/products/{run}-warm-{index}/") == 50
                if len(set(served_by(tmp_path).values())) == 2 or time.monotonic() > warm_until:
                    break
                time.sleep(0.02)
            assert len(set(served_by(tmp_path).values())) == 2

            # when a new version is saved
            committed_at = set_rate("20/minute")

            # then every request answered after the bound, by either worker, uses it
            after_bound: list[tuple[str, int]] = []
            while time.time() < committed_at + BOUND + 0.7:
                sent_at = time.time()
                path = f"/api/v1/products/{run}-{len(after_bound)}-{sent_at:.3f}/"
                seen = quota(gateway, path)
                if sent_at >= committed_at + BOUND:
                    after_bound.append((path, seen))
                else:
                    assert seen in (50, 20)
                time.sleep(0.01)
            workers = served_by(tmp_path)
            assert after_bound
            assert all(seen == 20 for _, seen in after_bound), after_bound
            assert len({workers[path] for path, _ in after_bound}) == 2  # both workers answered after the bound

            # and when the config center's database cannot be read, the workers keep the last good version
            for suffix in ("", "-wal", "-shm"):
                database = tmp_path / f"gateway.sqlite3{suffix}"
                if database.exists():
                    database.rename(tmp_path / f"moved.sqlite3{suffix}")
            time.sleep(BOUND)
            for index in range(10):
                assert quota(gateway, f"/api/v1/products/{run}-down-{index}/") == 20
            assert "config center unreadable, keeping version 2" in gateway.log()
