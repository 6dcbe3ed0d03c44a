"""The public OpenAPI document tells the truth: schemathesis generates requests from it (valid and invalid
ones: wrong types, missing fields, odd path ids, over-long strings) and sends them through the gateway to
the real services, signed in as a customer. Every answer must be one the document lists, with the body and
headers it describes, and none may be a server error. A client generated from the document can then handle
every answer the system gives.

Bounded: a fixed seed, a deterministic generator, a few examples per operation and a time budget. A
failure prints schemathesis' report, with a curl command that reproduces each case."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from conftest import Client

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def test_every_answer_to_generated_requests_is_documented_and_none_is_a_server_error(
    gateway: str, customer: tuple[Client, dict[str, Any]], tmp_path: Any
) -> None:
    client, _ = customer
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{gateway}/api/schema/",
        "--header",
        f"Authorization: Bearer {client.token}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        # Not stateful (it would place orders at random for minutes), nor coverage (every boundary value of
        # every parameter: thousands of requests, minutes on a loaded machine).
        "fuzzing",
        "--max-examples",
        "10",
        "--seed",
        "20261202",
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--max-time",
        "60",
        "--no-color",
        "--warnings",
        "off",
        "--report-dir",
        str(tmp_path),
    ]

    run = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False)

    report = run.stdout[-12000:] + run.stderr[-4000:]
    assert run.returncode == 0, report
    assert " passed" in run.stdout or "No issues found" in run.stdout, report
