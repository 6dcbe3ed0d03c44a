#!/usr/bin/env python3
"""Run the whole shop on one machine: ``python3 manage_all.py up`` and ``python3 manage_all.py test``.

Standard library only at the top, so it runs on a bare Python 3.11+: on first use it creates ``.venv``,
installs the pinned requirements into it and re-executes itself there. It is a thin launcher over each
project's own ``manage.py``, gunicorn and Celery; it imports no service code.

    up [--detach]        prepare databases and broker, start every service, worker and outbox relay, wait until healthy
    down                 stop what ``up --detach`` started
    status               one line per service, worker and relay, with its health
    test [pytest args]   every project's suite in its own process, then the cross-service tests in tests/
    manage SERVICE ARGS  pass ARGS to that service's manage.py (SERVICE: gateway, users, orders, payments)
    createsuperuser      create the same admin account in every service's database
    logs [SERVICE] [--request-id ID] [--follow]
                         the processes' JSON log lines from var/log/, merged in time order, filtered
    trace ID             print a trace (by trace id or request id) as a waterfall, from var/traces/
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
REQUIREMENTS = ROOT / "requirements-dev.txt"  # the runtime pins plus the test and lint tools
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    name: str
    project: str  # folder holding manage.py
    package: str  # the Django project package (settings, wsgi or the gateway's asgi, celery)
    port_env: str
    default_port: int
    database_env: str  # the launcher passes this variable to the service as its DATABASE_URL
    url_env: str | None  # how the other services are told where this one listens
    health_path: str
    prepare: tuple[tuple[str, ...], ...]
    worker_queues: tuple[str, ...] = ()
    # Pool processes of the event worker; 1 runs Celery's solo pool, the worker being the one process.
    worker_concurrency: int = 2
    # Publishes events: the launcher runs its outbox relay (manage.py relay_outbox) beside it.
    relays_outbox: bool = False
    # Long-running manage.py commands run beside the service, each as process "<service>-<command>".
    loops: tuple[str, ...] = ()

    @property
    def directory(self) -> Path:
        return ROOT / self.project


SERVICES: tuple[Service, ...] = (
    Service(
        name="gateway",
        project="gateway_project",
        package="gateway",
        port_env="GATEWAY_PORT",
        default_port=8000,
        database_env="GATEWAY_DATABASE_URL",
        url_env=None,
        health_path="/health",
        prepare=(("migrate", "--noinput"),),
        relays_outbox=True,  # config.changed events of the config center
    ),
    Service(
        name="users",
        project="user_project",
        package="user_service",
        port_env="USER_PORT",
        default_port=8001,
        database_env="USER_DATABASE_URL",
        url_env="USER_SERVICE_URL",
        health_path="/health/",
        prepare=(("migrate", "--noinput"), ("setup_broker",)),
        worker_queues=("users.events",),
        relays_outbox=True,
    ),
    Service(
        name="orders",
        project="order_project",
        package="order_service",
        port_env="ORDER_PORT",
        default_port=8002,
        database_env="ORDER_DATABASE_URL",
        url_env="ORDER_SERVICE_URL",
        health_path="/health/",
        prepare=(("migrate", "--noinput"), ("setup_broker",), ("load_demo_catalog",)),
        # config.changed only (common/runtime_config.py): rare and quick, so one process is enough.
        worker_queues=("orders.events",),
        worker_concurrency=1,
        relays_outbox=True,
        loops=("saga_sweeper",),  # finishes orders the payment service could not settle in time
    ),
    Service(
        name="payments",
        project="payment_project",
        package="payment_service",
        port_env="PAYMENT_PORT",
        default_port=8003,
        database_env="PAYMENT_DATABASE_URL",
        url_env="PAYMENT_SERVICE_URL",
        health_path="/health/",
        prepare=(("migrate", "--noinput"), ("setup_broker",)),
        worker_queues=("payments.events",),  # config.changed only, like the order service's
        worker_concurrency=1,
        relays_outbox=True,
    ),
)
SERVICES_BY_NAME = {service.name: service for service in SERVICES}


class LaunchError(Exception):
    """A problem the user can fix, reported as one line without a traceback."""


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


# --------------------------------------------------------------------------------------------------
# Bootstrap: the virtualenv


def requirements_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (ROOT / "requirements.txt", REQUIREMENTS, ROOT / "common" / "pyproject.toml"):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def ensure_virtualenv() -> None:
    """Create .venv and install the pinned requirements when missing or changed, then re-exec inside it."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    stamp = VENV / ".requirements-installed"
    fingerprint = requirements_fingerprint()
    if not VENV_PYTHON.exists():
        say(f"creating the virtualenv in {VENV.relative_to(ROOT)}/")
        run_quietly([sys.executable, "-m", "venv", str(VENV)], "creating the virtualenv")
    if not stamp.exists() or stamp.read_text() != fingerprint:
        say(f"installing pinned requirements from {REQUIREMENTS.name} (first run takes a minute)")
        run_quietly(
            [str(VENV_PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(REQUIREMENTS)],
            "installing requirements",
        )
        stamp.write_text(fingerprint)
    interpreter = str(VENV_PYTHON)
    os.execv(interpreter, [interpreter, str(Path(__file__).resolve()), *sys.argv[1:]])  # noqa: S606


def run_quietly(command: list[str], what: str) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise LaunchError(f"{what} failed (exit {result.returncode}); output above")


# --------------------------------------------------------------------------------------------------
# The system: configuration, processes, health


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None


@dataclass
class System:
    """Everything ``up`` runs, parameterised so the cross-service tests can run a second copy on free ports
    with its own var/ folder through exactly the same code."""

    var_dir: Path = field(default_factory=lambda: Path(os.environ.get("VAR_DIR") or ROOT / "var").resolve())
    ports: dict[str, int] = field(default_factory=dict)
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    web_workers: int = 2
    processes: list[Process] = field(default_factory=list)
    # ``up --scale orders=2``: extra web instances of a service, each on a free port (service discovery).
    scale: dict[str, int] = field(default_factory=dict)
    extra_ports: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for service in SERVICES:
            if service.name not in self.ports:
                self.ports[service.name] = int(self.base_env.get(service.port_env, service.default_port))
        for name, count in self.scale.items():
            self.extra_ports.setdefault(name, [free_port() for _ in range(count - 1)])

    # configuration ---------------------------------------------------------------------------------

    def url(self, service_name: str) -> str:
        return f"http://{HOST}:{self.ports[service_name]}"

    def instance_urls(self, service_name: str) -> list[str]:
        ports = [self.ports[service_name], *self.extra_ports.get(service_name, ())]
        return [f"http://{HOST}:{port}" for port in ports]

    def env_for(self, service: Service) -> dict[str, str]:
        env = dict(self.base_env)
        env["VAR_DIR"] = str(self.var_dir)
        env["PYTHONUNBUFFERED"] = "1"
        for other in SERVICES:
            if other.url_env:
                # Static discovery: every instance, comma-separated (etcd: the instances register too).
                env[other.url_env] = ",".join(self.instance_urls(other.name))
        if service.url_env:
            env["DISCOVERY_SERVICE"] = service.name  # the name it registers under (common/gunicorn_hooks.py)
        # Every service reads DATABASE_URL; the launcher hands each its own, so one shell can configure all.
        env.pop("DATABASE_URL", None)
        if self.base_env.get(service.database_env):
            env["DATABASE_URL"] = self.base_env[service.database_env]
        gateway = self.url("gateway")
        env.setdefault("CSRF_TRUSTED_ORIGINS", f"{gateway},{gateway.replace(HOST, 'localhost')}")
        env.setdefault("CONFIG_CENTER_URL", gateway)  # the services read their runtime settings there
        return env

    def manage_command(self, *args: str) -> list[str]:
        return [sys.executable, "manage.py", *args]

    def web_command(self, service: Service, port: int | None = None) -> list[str]:
        if service.name == "gateway":
            # gunicorn's ASGI worker: one event loop per worker answers the forwarded /api/ paths
            # (gateway/asgi.py). It takes no --threads; gunicorn 27 reads but does not enforce
            # --worker-connections there, so none is passed.
            app, worker = "gateway.asgi:application", ["--worker-class", "asgi"]
        else:
            app, worker = f"{service.package}.wsgi:application", ["--worker-class", "gthread", "--threads", "8"]
        command = [
            sys.executable, "-m", "gunicorn", app,
            "--bind", f"{HOST}:{port or self.ports[service.name]}",
            *worker, "--workers", str(self.web_workers),
            # Longer than the callers' idle-connection time, so pooled connections aren't cut mid-reuse.
            "--keep-alive", "75",
            "--graceful-timeout", "10",
            "--name", f"shop-{service.name}",
            # gunicorn 27 otherwise puts one control socket in ~/.gunicorn/ that all four servers would share.
            "--no-control-socket",
        ]  # fmt: skip
        if service.name == "gateway":
            # The gateway faces clients: never take a client's X-Forwarded-* as the truth.
            command += ["--forwarded-allow-ips", ""]
        else:
            # Registers the instance with service discovery (etcd) when ready, deregisters on exit.
            command += ["--config", "python:common.gunicorn_hooks"]
        return command

    def worker_command(self, service: Service) -> list[str]:
        command = [
            sys.executable, "-m", "celery", "-A", service.package, "worker",
            "--queues", ",".join(service.worker_queues),
            "--hostname", f"{service.name}@%h",
            "--loglevel", "INFO",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if service.worker_concurrency == 1:
            # No pool process beside the worker (prefork with one would be two processes). Celery's time
            # limits need prefork; a solo worker's handlers are bounded by their own timeouts.
            return [*command, "--pool", "solo"]
        return [*command, "--concurrency", str(service.worker_concurrency)]

    # lifecycle -------------------------------------------------------------------------------------

    def check_ports_free(self) -> None:
        for service in SERVICES:
            port = self.ports[service.name]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                # As gunicorn binds: a port whose last connections still wait out TIME_WAIT (a system just
                # stopped) is free to listen on; one that something listens on is not.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((HOST, port))
                except OSError:
                    raise LaunchError(
                        f"port {port} ({service.name}) is already in use; stop what uses it or set "
                        f"{service.port_env} to another port"
                    ) from None

    def prepare(self) -> None:
        """Migrate every database, declare the broker queues and load demo data, services in parallel."""
        self.var_dir.mkdir(parents=True, exist_ok=True)

        def prepare_one(service: Service) -> None:
            for args in service.prepare:
                result = subprocess.run(
                    self.manage_command(*args),
                    cwd=service.directory,
                    env=self.env_for(service),
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if result.returncode != 0:
                    sys.stderr.write(result.stdout + result.stderr)
                    raise LaunchError(f"{service.name}: manage.py {' '.join(args)} failed; output above")

        with ThreadPoolExecutor(max_workers=len(SERVICES)) as pool:
            for future in [pool.submit(prepare_one, service) for service in SERVICES]:
                future.result()

    def start(self, *, log_dir: Path | None) -> None:
        """Start every web process and worker. With ``log_dir`` their output goes to files there and they
        outlive the launcher; without, the caller streams it."""
        for service in SERVICES:
            self._spawn(service.name, service, self.web_command(service), log_dir)
            for number, port in enumerate(self.extra_ports.get(service.name, ()), start=2):
                self._spawn(f"{service.name}-{number}", service, self.web_command(service, port), log_dir)
            if service.worker_queues:
                self._spawn(f"{service.name}-worker", service, self.worker_command(service), log_dir)
            if service.relays_outbox:
                self._spawn(f"{service.name}-relay", service, self.manage_command("relay_outbox"), log_dir)
            for loop in service.loops:
                self._spawn(f"{service.name}-{loop}", service, self.manage_command(loop), log_dir)

    def metrics_dir(self, service: Service, process_name: str) -> Path | None:
        """prometheus_client's multiprocess folder of a service's web instance (common/metrics.py): shared by
        its gunicorn workers and, for the first instance, by the service's Celery worker, so one scrape
        reports both. The gateway's gunicorn.conf.py gives each gateway master a folder itself."""
        if service.name == "gateway":
            return None
        suffix = process_name.removeprefix(f"{service.name}-")
        return self.var_dir / "metrics" / (process_name if suffix.isdigit() else service.name)

    def _spawn(self, name: str, service: Service, command: list[str], log_dir: Path | None) -> None:
        env = self.env_for(service)
        metrics_dir = self.metrics_dir(service, name)
        if metrics_dir is not None:
            if metrics_dir.name == name:  # the web instance, started before its worker: values of a past run go
                shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True, exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)

        def popen(output: IO[bytes] | int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                command,
                cwd=service.directory,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group: Ctrl-C reaches only the launcher, which then stops it cleanly.
                start_new_session=True,
            )

        log_path = None
        if log_dir is None:
            process = popen(subprocess.PIPE)
        else:
            log_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_dir / f"{name}.log"
            with log_path.open("ab") as log_file:
                process = popen(log_file)
        self.processes.append(Process(name=name, popen=process, log_path=log_path))

    def wait_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        pending = list(SERVICES)
        while pending:
            for process in self.processes:
                if process.popen.poll() is not None:
                    raise LaunchError(
                        f"{process.name} exited with code {process.popen.returncode}{self._log_hint(process)}"
                    )
            pending = [
                service
                for service in pending
                if any(health(url + service.health_path)[0] != 200 for url in self.instance_urls(service.name))
            ]
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(service.name for service in pending)
                raise LaunchError(f"not healthy after {timeout:.0f}s: {names}")
            time.sleep(0.3)

    def _log_hint(self, process: Process) -> str:
        if process.log_path and process.log_path.exists():
            tail = process.log_path.read_text(errors="replace").splitlines()[-15:]
            return f"; last lines of {process.log_path}:\n" + "\n".join(tail)
        return ""

    def stop(self, timeout: float = 15) -> None:
        stop_processes([(p.name, p.popen.pid) for p in self.processes if p.popen.poll() is None], timeout)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=1)
        self.processes.clear()

    # detached runs -----------------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    def write_pidfiles(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for process in self.processes:
            (self.run_dir / f"{process.name}.pid").write_text(str(process.popen.pid))
        (self.run_dir / "ports.json").write_text(json.dumps(self.ports))

    def recorded_processes(self) -> list[tuple[str, int]]:
        if not self.run_dir.exists():
            return []
        return [(path.stem, int(path.read_text())) for path in sorted(self.run_dir.glob("*.pid"))]


def health(url: str, timeout: float = 2) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (our loopback URL)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        with contextlib.suppress(ValueError):
            return error.code, json.loads(error.read() or b"null")
        return error.code, None
    except (OSError, ValueError):
        return 0, None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_processes(processes: list[tuple[str, int]], timeout: float) -> None:
    """SIGTERM each main process (gunicorn's master and Celery's main process shut their children down
    gracefully on it), then SIGKILL the process group of any that has not finished in time."""
    for _, pid in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(pid) for _, pid in processes):
        time.sleep(0.1)
        for _, pid in processes:  # reap our own children so they don't linger as zombies
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
    for name, pid in processes:
        if pid_alive(pid):
            print(f"{name} did not stop in {timeout:.0f}s; killing it", flush=True)
        # The group too: a worker child orphaned by a crash must not keep a port or a message.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------
# Commands


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (``kill``, a container stop) both mean "stop everything cleanly". Set explicitly:
    a launcher started in the background by a script inherits SIGINT ignored."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def parse_scale(values: list[str]) -> dict[str, int]:
    """``--scale orders=2`` (``order=2`` too): how many web instances of a service to run."""
    scale: dict[str, int] = {}
    for value in values:
        name, _, count = value.partition("=")
        name = name if name in SERVICES_BY_NAME else f"{name}s"
        if name not in SERVICES_BY_NAME or name == "gateway" or not count.isdigit() or int(count) < 1:
            raise LaunchError(f"--scale {value}: expected SERVICE=N with SERVICE one of users, orders, payments")
        scale[name] = int(count)
    return scale


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def command_up(args: argparse.Namespace) -> int:
    system = System(scale=parse_scale(args.scale or []))
    stop_on_signals()
    if any(pid_alive(pid) for _, pid in system.recorded_processes()):
        raise LaunchError("the shop is already running (python3 manage_all.py status / down)")
    for stale in system.run_dir.glob("*.pid") if system.run_dir.exists() else ():
        stale.unlink()
    system.check_ports_free()
    say("migrating databases, declaring broker queues, loading demo data")
    system.prepare()
    say("starting " + ", ".join(name for name in process_names()))
    log_dir = system.var_dir / "log" if args.detach else None
    system.start(log_dir=log_dir)
    streamers = [] if args.detach else start_log_streamers(system)
    try:
        system.wait_healthy()
        print_urls(system)
        if args.detach:
            system.write_pidfiles()
            say(f"running in the background; logs in {log_dir}; stop with: python3 manage_all.py down")
            return 0
        say("streaming logs; press Ctrl-C to stop")
        while all(process.popen.poll() is None for process in system.processes):
            time.sleep(0.5)
        exited = next(p for p in system.processes if p.popen.poll() is not None)
        say(f"{exited.name} exited with code {exited.popen.returncode}; stopping everything")
        return 1
    except KeyboardInterrupt:
        print()
        say("stopping")
        return 0
    except LaunchError:
        system.stop()
        raise
    finally:
        if not args.detach:
            system.stop()
            for streamer in streamers:
                streamer.join(timeout=2)


def process_names() -> Iterator[str]:
    for service in SERVICES:
        yield service.name
        if service.worker_queues:
            yield f"{service.name}-worker"
        if service.relays_outbox:
            yield f"{service.name}-relay"
        for loop in service.loops:
            yield f"{service.name}-{loop}"


def start_log_streamers(system: System) -> list[threading.Thread]:
    width = max(len(name) for name in process_names())
    lock = threading.Lock()

    def stream(process: Process) -> None:
        assert process.popen.stdout is not None
        for raw in process.popen.stdout:
            line = raw.decode(errors="replace").rstrip()
            with lock:
                print(f"{process.name:<{width}} | {line}", flush=True)

    threads = [threading.Thread(target=stream, args=(p,), daemon=True) for p in system.processes]
    for thread in threads:
        thread.start()
    return threads


def print_urls(system: System) -> None:
    gateway = system.url("gateway")
    lines = [
        "the shop is up:",
        f"  API              {gateway}/api/v1/   (try: curl {gateway}/api/v2/products/)",
        f"  health, metrics  {gateway}/health  {gateway}/metrics",
        f"  admin            {gateway}/admin/  {gateway}/admin/users/  {gateway}/admin/orders/  "
        f"{gateway}/admin/payments/",
        f"  API docs         {gateway}/api/docs/",
        f"  emails           {system.var_dir / 'mail'}/",
        "  admin account    python3 manage_all.py createsuperuser",
    ]
    say("\n".join(lines))


def command_down(args: argparse.Namespace) -> int:
    system = System()
    recorded = system.recorded_processes()
    running = [(name, pid) for name, pid in recorded if pid_alive(pid)]
    if not running:
        say("nothing is running")
    else:
        say("stopping " + ", ".join(name for name, _ in running))
        stop_processes(running, timeout=20)
    for path in system.run_dir.glob("*.pid") if system.run_dir.exists() else ():
        path.unlink()
    return 0


def command_status(args: argparse.Namespace) -> int:
    system = System()
    ports_file = system.run_dir / "ports.json"
    if ports_file.exists():
        system.ports.update(json.loads(ports_file.read_text()))
    pids = dict(system.recorded_processes())
    all_ok = True
    for service in SERVICES:
        pid = pids.get(service.name)
        status, _ = health(system.url(service.name) + service.health_path)
        state = "healthy" if status == 200 else ("unhealthy" if status else "down")
        all_ok &= status == 200
        running = f"pid {pid}" if pid and pid_alive(pid) else "not started by the launcher"
        print(f"{service.name:<16} {state:<10} {system.url(service.name):<24} {running}")
        if service.worker_queues:
            worker_pid = pids.get(f"{service.name}-worker")
            alive = bool(worker_pid and pid_alive(worker_pid))
            all_ok &= alive
            state = "running" if alive else "down"
            print(f"{service.name + '-worker':<16} {state:<10} {'queues ' + ','.join(service.worker_queues):<24}")
        if service.relays_outbox:
            relay_pid = pids.get(f"{service.name}-relay")
            alive = bool(relay_pid and pid_alive(relay_pid))
            all_ok &= alive
            state = "running" if alive else "down"
            print(f"{service.name + '-relay':<16} {state:<10} {'outbox -> events':<24}")
        for loop in service.loops:
            loop_pid = pids.get(f"{service.name}-{loop}")
            alive = bool(loop_pid and pid_alive(loop_pid))
            all_ok &= alive
            print(f"{service.name + '-' + loop:<16} {'running' if alive else 'down':<10} {'manage.py ' + loop:<24}")
    return 0 if all_ok else 1


def command_manage(args: argparse.Namespace) -> int:
    service = SERVICES_BY_NAME.get(args.service)
    if service is None:
        raise LaunchError(f"unknown service {args.service!r}; choose from {', '.join(SERVICES_BY_NAME)}")
    system = System()
    return subprocess.call(system.manage_command(*args.args), cwd=service.directory, env=system.env_for(service))


def command_createsuperuser(args: argparse.Namespace) -> int:
    email = args.email or input("Email: ").strip()
    name = args.name or input("Name: ").strip() or email.split("@")[0]
    password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or getpass.getpass("Password: ")
    if not email or not password:
        raise LaunchError("an email and a password are required")
    system = System()
    system.prepare()
    for service, created in create_superuser(system, email=email, name=name, password=password):
        say(f"{service}: admin {email} {'created' if created else 'already exists'}")
    return 0


def create_superuser(system: System, *, email: str, name: str, password: str) -> Iterator[tuple[str, bool]]:
    """The same account in every service's database, so one login opens every admin."""
    extra = {
        "DJANGO_SUPERUSER_EMAIL": email,
        "DJANGO_SUPERUSER_USERNAME": email,  # services on Django's default user model log in by username
        "DJANGO_SUPERUSER_NAME": name,
        "DJANGO_SUPERUSER_PASSWORD": password,
    }
    for service in SERVICES:
        result = subprocess.run(
            system.manage_command("createsuperuser", "--noinput"),
            cwd=service.directory,
            env={**system.env_for(service), **extra},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode == 0:
            yield service.name, True
        elif "already" in (result.stdout + result.stderr):
            yield service.name, False
        else:
            sys.stderr.write(result.stdout + result.stderr)
            raise LaunchError(f"{service.name}: createsuperuser failed; output above")


@dataclass
class SuiteResult:
    name: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    exit_code: int = 0


def run_pytest(name: str, directory: Path, env: dict[str, str], extra_args: list[str], report: Path) -> SuiteResult:
    """Run one suite, its output going to ``<report>.log``; print that output once the suite is done."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *extra_args]
    log_path = report.with_suffix(".log")
    with log_path.open("wb") as log:
        exit_code = subprocess.call(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    with OUTPUT_LOCK:
        say(f"tests: {name}")
        sys.stdout.write(log_path.read_text(errors="replace"))
        sys.stdout.flush()
    result = SuiteResult(name=name, exit_code=exit_code)
    if report.exists():
        for suite in ElementTree.parse(report).getroot().iter("testsuite"):  # noqa: S314 (pytest wrote it)
            total = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            result.failed += failed
            result.skipped += skipped
            result.passed += total - failed - skipped
    if exit_code not in (0, 5) and result.failed == 0:
        result.failed = 1  # pytest itself failed (collection error, bad option): count it
    return result


OUTPUT_LOCK = threading.Lock()


def command_test(args: argparse.Namespace) -> int:
    system = System()
    report_dir = system.var_dir / "test-reports"
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir(parents=True)
    checks_failed: list[str] = []

    say("checks: ruff, import contracts")
    if subprocess.call([sys.executable, "-m", "ruff", "check", "--quiet", "."], cwd=ROOT) != 0:
        checks_failed.append("ruff")
    if subprocess.call([sys.executable, "-m", "ruff", "format", "--check", "--quiet", "."], cwd=ROOT) != 0:
        checks_failed.append("ruff format")
    lint_env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(s.directory) for s in SERVICES)}
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        env=lint_env,
        capture_output=True,
        text=True,
        check=False,
    )
    if lint.returncode != 0:
        sys.stdout.write(lint.stdout + lint.stderr)
        checks_failed.append("import contracts")

    # The project suites share nothing (each has its own test databases, var/ folder, key prefixes and a
    # private broker) and spend much of their time waiting on processes they start, so they run side by
    # side; the end-to-end suite then runs alone, as it starts the whole system.
    suites = [("common", ROOT / "common", {**os.environ, "VAR_DIR": str(report_dir / "var" / "common")})]
    for service in SERVICES:
        env = {**system.env_for(service), "VAR_DIR": str(report_dir / "var" / service.name)}
        suites.append((service.name, service.directory, env))
    say("tests: " + ", ".join(name for name, _, _ in suites) + " (side by side)")
    with ThreadPoolExecutor(max_workers=len(suites)) as pool:
        futures = [
            pool.submit(run_pytest, name, directory, env, args.pytest_args, report_dir / f"{name}.xml")
            for name, directory, env in suites
        ]
        results = [future.result() for future in futures]
    results.append(run_pytest("end-to-end", ROOT / "tests", dict(os.environ), args.pytest_args, report_dir / "e2e.xml"))

    passed = sum(r.passed for r in results)
    failed = sum(r.failed for r in results)
    skipped = sum(r.skipped for r in results)
    for result in results:
        print(f"  {result.name:<12} {result.passed} passed, {result.failed} failed, {result.skipped} skipped")
    if checks_failed:
        print("checks failed: " + ", ".join(checks_failed))
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or checks_failed or passed == 0 else 0


# trace: the embedded-mode span files (common/tracing.py writes them) as a waterfall ----------------------


def read_trace_spans(trace_dir: Path, wanted: str) -> list[dict[str, Any]]:
    """Every span of the trace(s) ``wanted`` names: a trace id, or a request id some span carries."""
    spans: list[dict[str, Any]] = []
    for path in sorted(trace_dir.glob("*.jsonl*")):
        with path.open(encoding="utf-8", errors="replace") as file:
            for line in file:
                try:
                    span = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a process killed mid-write
                if isinstance(span, dict) and span.get("trace_id"):
                    spans.append(span)
    wanted = wanted.strip().lower()
    trace_ids = {
        span["trace_id"] for span in spans if wanted in (span["trace_id"], str(span.get("request_id", "")).lower())
    }
    return [span for span in spans if span["trace_id"] in trace_ids]


def format_waterfall(spans: list[dict[str, Any]], *, width: int = 30) -> str:
    """One line per span, children indented under their parent, ordered by start: start offset and
    duration in ms from the trace's first span, a bar on the trace's time line, status, errors marked."""
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], []).append(span)
    lines: list[str] = []
    for trace_id, members in sorted(by_trace.items(), key=lambda item: min(s["start_ns"] for s in item[1])):
        lines += [*_waterfall_lines(trace_id, members, width), ""]
    return "\n".join(lines)


def _waterfall_lines(trace_id: str, members: list[dict[str, Any]], width: int) -> list[str]:
    start = min(span["start_ns"] for span in members)
    total = max(max(span["end_ns"] or span["start_ns"] for span in members) - start, 1)
    ids = {span["span_id"] for span in members}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in members:
        children.setdefault(span.get("parent_id") if span.get("parent_id") in ids else None, []).append(span)
    errors = sum(span.get("status") == "error" for span in members)
    services = ", ".join(sorted({span.get("service", "?") for span in members}))
    lines = [
        f"trace {trace_id}: {len(members)} spans, {total / 1e6:.1f} ms, services: {services}"
        + (f", {errors} error(s)" if errors else ""),
        f"{'start ms':>9} {'dur ms':>9}  {'':{width}}  operation",
    ]

    def walk(span: dict[str, Any], depth: int) -> None:
        end = span["end_ns"] or span["start_ns"]
        left = int((span["start_ns"] - start) / total * width)
        bar = (" " * left + "#" * max(1, round((end - span["start_ns"]) / total * width)))[:width].ljust(width)
        line = f"{(span['start_ns'] - start) / 1e6:9.1f} {(end - span['start_ns']) / 1e6:9.1f}  {bar}  "
        line += f"{'  ' * depth}{span.get('service', '?')}: {span['name']} [{span.get('kind', '')}]"
        if span.get("parent_id") and span["parent_id"] not in ids:
            line += " (parent not recorded)"
        if span.get("status") == "error":
            line += "  !! ERROR" + (f": {span['error']}" if span.get("error") else "")
        lines.append(line)
        for child in sorted(children.get(span["span_id"], []), key=lambda s: s["start_ns"]):
            walk(child, depth + 1)

    for root in sorted(children.get(None, []), key=lambda s: s["start_ns"]):
        walk(root, 0)
    return lines


def command_trace(args: argparse.Namespace) -> int:
    trace_dir = Path(os.environ.get("VAR_DIR") or ROOT / "var").resolve() / "traces"
    spans = read_trace_spans(trace_dir, args.id)
    if not spans:
        print(f"no trace with id or request id {args.id!r} under {trace_dir}", file=sys.stderr)
        return 1
    print(format_waterfall(spans))
    return 0


# logs: the JSON log lines of every process (common/logs.py writes them), merged in time order ------------


def log_files(log_dir: Path, service: str | None) -> list[Path]:
    """``var/log/<process>.log`` of one service (its web process, worker, relay, loops) or of all."""
    files = sorted(log_dir.glob("*.log")) if log_dir.is_dir() else []
    if service is None:
        return files
    return [path for path in files if path.stem == service or path.stem.startswith(f"{service}-")]


def parse_log_line(line: str, process: str, previous_time: str) -> dict[str, Any] | None:
    """A JSON record as written, or a plain line (a server's banner, a crash before logging was set up)
    wrapped as one, placed at the time of the line before it so a file keeps its order when merged."""
    line = line.rstrip("\n")
    if not line.strip():
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or "time" not in entry:
        entry = {"time": previous_time, "level": "-", "message": line, "request_id": "", "plain": True}
    entry["process"] = process
    return entry


def read_log_entries(files: list[Path], offsets: dict[Path, int], request_id: str | None) -> list[dict[str, Any]]:
    """The records added to ``files`` since ``offsets`` (updated), filtered by request id, in time order.
    Only whole lines are taken: a line being written is read on the next pass."""
    entries: list[dict[str, Any]] = []
    for path in files:
        with contextlib.suppress(OSError), path.open("rb") as file:
            file.seek(offsets.get(path, 0))
            data = file.read()
            complete = data[: data.rfind(b"\n") + 1]
            offsets[path] = offsets.get(path, 0) + len(complete)
            previous_time = ""
            for raw in complete.decode("utf-8", errors="replace").splitlines():
                entry = parse_log_line(raw, path.stem, previous_time)
                if entry is None:
                    continue
                previous_time = str(entry["time"])
                if request_id is None or (not entry.get("plain") and entry.get("request_id") == request_id):
                    entries.append(entry)
    # A stable sort: lines of one file that share a time keep their order.
    return sorted(entries, key=lambda entry: str(entry["time"]))


def format_log_entry(entry: dict[str, Any]) -> str:
    if entry.get("plain"):
        return f"{'':23}  {entry['process']:<17} {'':<7} {entry['message']}"
    time_text = str(entry["time"]).replace("T", " ").removesuffix("+00:00")
    line = f"{time_text:<23}  {entry['process']:<17} {entry.get('level', '-'):<7} {entry.get('message', '')}"
    if "duration_ms" in entry:  # the gateway's access line
        line += f" ({entry['duration_ms']} ms)"
    if entry.get("request_id"):
        line += f"  [{entry['request_id']}]"
    if entry.get("exception"):
        line += "\n" + "\n".join("    " + text for text in str(entry["exception"]).splitlines())
    return line


def command_logs(args: argparse.Namespace) -> int:
    log_dir = Path(os.environ.get("VAR_DIR") or ROOT / "var").resolve() / "log"
    if args.service is not None and args.service not in SERVICES_BY_NAME:
        raise LaunchError(f"unknown service {args.service!r}; choose from {', '.join(SERVICES_BY_NAME)}")
    files = log_files(log_dir, args.service)
    if not files and not args.follow:
        raise LaunchError(f"no log files in {log_dir} (python3 manage_all.py up --detach writes them)")
    offsets: dict[Path, int] = {}
    for entry in read_log_entries(files, offsets, args.request_id):
        print(format_log_entry(entry))
    sys.stdout.flush()
    if not args.follow:
        return 0
    stop_on_signals()
    try:
        while True:
            time.sleep(0.5)
            # Processes started later (a restart, a new worker) bring new files.
            for entry in read_log_entries(log_files(log_dir, args.service), offsets, args.request_id):
                print(format_log_entry(entry), flush=True)
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manage_all.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="run the whole system")
    up.add_argument("--detach", action="store_true", help="return once healthy, leaving it running")
    up.add_argument("--scale", action="append", metavar="SERVICE=N", help="run N web instances of SERVICE")
    up.set_defaults(handler=command_up)
    commands.add_parser("down", help="stop a detached system").set_defaults(handler=command_down)
    commands.add_parser("status", help="show each process and its health").set_defaults(handler=command_status)
    test = commands.add_parser("test", help="run every test suite")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to every pytest run")
    test.set_defaults(handler=command_test)
    manage = commands.add_parser("manage", help="run a service's manage.py")
    manage.add_argument("service")
    manage.add_argument("args", nargs=argparse.REMAINDER)
    manage.set_defaults(handler=command_manage)
    superuser = commands.add_parser("createsuperuser", help="one admin account in every service")
    superuser.add_argument("--email")
    superuser.add_argument("--name")
    superuser.set_defaults(handler=command_createsuperuser)
    trace = commands.add_parser("trace", help="print one trace as a waterfall (embedded mode: var/traces/)")
    trace.add_argument("id", help="a trace id, or a request id (X-Request-ID) of a request in it")
    trace.set_defaults(handler=command_trace)
    logs = commands.add_parser("logs", help="show the JSON logs of every process (var/log/), merged in time order")
    logs.add_argument("service", nargs="?", help="only this service's processes (gateway, users, orders, payments)")
    logs.add_argument("--request-id", help="only the lines of this request (its X-Request-ID)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines as they are written")
    logs.set_defaults(handler=command_logs)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        ensure_virtualenv()
        return int(args.handler(args))
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
