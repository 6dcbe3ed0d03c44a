"""The launcher's own commands, run as a user runs them: ``up --detach``, ``status``, ``down``, and the
one-line error for a port that is taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import ROOT, free_port

import manage_all


def launcher(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage_all.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def launcher_env(tmp_path: Path) -> dict[str, str]:
    """Embedded mode on free ports with a var/ folder of its own, whatever mode the suite runs in."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("BROKER_URL", "REDIS_URL", "DATABASE_URL") and not name.endswith("_DATABASE_URL")
    }
    env["VAR_DIR"] = str(tmp_path / "var")
    for service in manage_all.SERVICES:
        env[service.port_env] = str(free_port())
    return env


def running_pids(var_dir: Path) -> list[int]:
    return [int(path.read_text()) for path in (var_dir / "run").glob("*.pid")]


def test_up_detached_then_status_then_down(launcher_env: dict[str, str]) -> None:
    var_dir = Path(launcher_env["VAR_DIR"])
    gateway = f"http://127.0.0.1:{launcher_env['GATEWAY_PORT']}"
    try:
        started = launcher("up", "--detach", env=launcher_env)
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"{gateway}/api/v1/" in started.stdout
        assert requests.get(f"{gateway}/health", timeout=10).status_code == 200

        status = launcher("status", env=launcher_env, timeout=30)
        assert status.returncode == 0, status.stdout
        lines = status.stdout.splitlines()
        # four services, three event workers (users, orders, payments), four outbox relays, the saga sweeper
        assert len(lines) == 12
        assert {"users-worker", "orders-worker", "payments-worker"} <= {line.split()[0] for line in lines}
        assert {"gateway-relay", "users-relay", "orders-relay", "payments-relay"} <= {line.split()[0] for line in lines}
        assert all(("healthy" in line or "running" in line) for line in lines), status.stdout

        again = launcher("up", "--detach", env=launcher_env, timeout=30)
        assert again.returncode == 1
        assert "already running" in again.stderr
        pids = running_pids(var_dir)
    finally:
        stopped = launcher("down", env=launcher_env, timeout=60)

    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert all(not manage_all.pid_alive(pid) for pid in pids)
    assert running_pids(var_dir) == []
    status = launcher("status", env=launcher_env, timeout=30)
    assert status.returncode == 1
    assert "down" in status.stdout


def test_a_port_in_use_is_one_clear_line(launcher_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(launcher_env["ORDER_PORT"])))
        squatter.listen()

        result = launcher("up", "--detach", env=launcher_env, timeout=60)

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: port {launcher_env['ORDER_PORT']} (orders) is already in use; stop what uses it or set "
        "ORDER_PORT to another port"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_a_port_a_just_stopped_server_left_in_time_wait_counts_as_free(tmp_path: Path) -> None:
    # given a port whose server closed its last connection first, as gunicorn does at 'down'
    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as server:
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side of the connection now waits in TIME_WAIT for a minute
        assert client.recv(1) == b""
        client.close()
    ports = {service.name: free_port() for service in manage_all.SERVICES} | {"orders": port}
    system = manage_all.System(var_dir=tmp_path, ports=ports, base_env=dict(os.environ))

    # then 'up' right after 'down' does not call it taken (gunicorn can listen on it)
    system.check_ports_free()
    # and a port something listens on still is taken
    taken = f"port {port} \\(orders\\) is already in use"
    with socket.create_server(("127.0.0.1", port)), pytest.raises(manage_all.LaunchError, match=taken):
        system.check_ports_free()


def test_manage_passes_through_to_one_service(launcher_env: dict[str, str]) -> None:
    result = launcher("manage", "payments", "check", "--deploy", "--fail-level", "CRITICAL", env=launcher_env)

    assert result.returncode == 0, result.stderr
    assert "System check identified" in result.stdout + result.stderr
