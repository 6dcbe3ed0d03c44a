"""``manage_all.py logs``: the processes' JSON log lines merged in time order and filtered by request id, read
from log files written here (no system started)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT


def record(time: str, service: str, message: str, request_id: str = "", **fields: object) -> str:
    entry = {"time": time, "service": service, "level": "INFO", "logger": "x", "message": message}
    return json.dumps({**entry, "request_id": request_id, "trace_id": "", **fields}) + "\n"


def logs(var_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "manage_all.py"), "logs", *args],
        env={**os.environ, "VAR_DIR": str(var_dir)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def write_logs(var_dir: Path) -> None:
    log_dir = var_dir / "log"
    log_dir.mkdir(parents=True)
    (log_dir / "gateway.log").write_text(
        "[INFO] Booting worker with pid: 7\n"  # gunicorn's own plain line
        + record("2026-11-28T01:00:00.100+00:00", "gateway", "GET /api/v1/orders/ 201", "req-aaaa-0001")
        + record("2026-11-28T01:00:00.900+00:00", "gateway", "GET /api/v1/products/ 200", "req-bbbb-0002")
    )
    (log_dir / "orders.log").write_text(
        record("2026-11-28T01:00:00.050+00:00", "orders", "order 7 created", "req-aaaa-0001")
        + record("2026-11-28T01:00:00.060+00:00", "orders", "unrelated", "req-cccc-0003")
    )
    (log_dir / "orders-relay.log").write_text(
        record("2026-11-28T01:00:00.500+00:00", "orders", "event sent", "req-aaaa-0001")
        + '{"time": "2026-11-28T01:00:00.6'  # a line still being written
    )
    failure = record(
        "2026-11-28T01:00:00.700+00:00", "users", "handler failed", "req-aaaa-0001", exception="Traceback\nBoom"
    )
    (log_dir / "users-worker.log").write_text(failure)


def test_logs_of_one_request_are_merged_across_services_in_time_order(tmp_path: Path) -> None:
    write_logs(tmp_path)

    result = logs(tmp_path, "--request-id", "req-aaaa-0001")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[2] for line in lines if line[:1].isdigit()] == [
        "orders",
        "gateway",
        "orders-relay",
        "users-worker",
    ]
    assert "order 7 created" in lines[0]
    assert "2026-11-28 01:00:00.050" in lines[0]
    assert "unrelated" not in result.stdout
    assert "products" not in result.stdout
    assert "Booting worker" not in result.stdout  # a plain line belongs to no request
    assert "    Boom" in result.stdout  # the exception, indented under its line


def test_logs_of_one_service_include_its_worker_and_relay_processes(tmp_path: Path) -> None:
    write_logs(tmp_path)

    result = logs(tmp_path, "orders")

    assert result.returncode == 0, result.stderr
    assert [line.split("INFO", 1)[1].split("  [")[0].strip() for line in result.stdout.splitlines()] == [
        "order 7 created",
        "unrelated",
        "event sent",
    ]


def test_logs_of_an_unknown_service_or_without_log_files_fail_in_one_line(tmp_path: Path) -> None:
    missing = logs(tmp_path)
    write_logs(tmp_path)
    unknown = logs(tmp_path, "inventory")

    assert (missing.returncode, unknown.returncode) == (1, 1)
    assert missing.stderr.startswith("error: no log files in ")
    assert unknown.stderr.startswith("error: unknown service 'inventory'")


def test_follow_prints_lines_written_later_including_new_processes_files(tmp_path: Path) -> None:
    write_logs(tmp_path)
    follower = subprocess.Popen(
        [sys.executable, str(ROOT / "manage_all.py"), "logs", "--follow", "--request-id", "req-dddd-0004"],
        env={**os.environ, "VAR_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.8)  # past its first read
        with (tmp_path / "log" / "payments.log").open("a") as log:
            log.write(record("2026-11-28T01:00:05.000+00:00", "payments", "charged", "req-dddd-0004"))
        assert follower.stdout is not None
        ready, _, _ = select.select([follower.stdout], [], [], 10)
        assert ready, "nothing printed within 10 s"
        line = follower.stdout.readline()
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)

    assert "payments" in line
    assert "charged" in line
    assert follower.returncode == 0
