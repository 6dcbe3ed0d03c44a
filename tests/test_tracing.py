"""One order through the gateway is one trace, across every process it touched (see common/tracing.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import ROOT, Client, sign_up, wait_for_mail

import manage_all


def trace_spans(system: manage_all.System, request_id: str) -> list[dict[str, Any]]:
    return manage_all.read_trace_spans(system.var_dir / "traces", request_id)


def test_an_order_is_one_trace_from_the_gateway_to_the_email_consumer(
    anonymous: Client, system: manage_all.System
) -> None:
    # given a signed-in customer
    customer, account = sign_up(system.url("gateway"), name="Trace Tester")
    product = anonymous.get("/api/v1/products/").json()[0]

    # when they place an order, claiming a trace of their own
    client_trace = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    response = customer.post(
        "/api/v1/orders/",
        json={"items": [{"product_id": product["id"], "quantity": 1}], "payment_method": "tok_visa"},
        headers={"traceparent": client_trace},
    )
    assert response.status_code == 201, response.text
    request_id = response.headers["X-Request-ID"]
    wait_for_mail(system.var_dir, account["email"], f"#{response.json()['id']}")

    # then, once the processes have exported (batched every half second), one trace holds them all
    wanted = {"gateway", "users", "orders", "payments"}
    deadline = time.monotonic() + 15
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        spans = trace_spans(system, request_id)
        consumer = [s for s in spans if s["service"] == "users" and s["kind"] == "consumer"]
        # each process exports on its own schedule, so a child can be on disk before its parent
        exported = {s["span_id"] for s in spans}
        parents_exported = all(s["parent_id"] in exported for s in spans if s["parent_id"] is not None)
        if wanted <= {s["service"] for s in spans} and consumer and parents_exported:
            break
        time.sleep(0.5)
    assert spans
    assert len({s["trace_id"] for s in spans}) == 1, spans
    assert wanted <= {s["service"] for s in spans}
    # the email consumer's Celery span is in it, continuing from the relayed message's headers
    assert any(s["service"] == "users" and s["name"] == "run/events.handle" for s in spans)
    # every span's parent is in the trace; the only root is the gateway's server span
    ids = {s["span_id"] for s in spans}
    roots = [s for s in spans if s["parent_id"] is None]
    assert [(r["service"], r["kind"]) for r in roots] == [("gateway", "server")]
    orphans = [s for s in spans if s["parent_id"] is not None and s["parent_id"] not in ids]
    assert not orphans, orphans
    # the client's traceparent was not trusted: a new trace id, the client's kept as a link only
    assert spans[0]["trace_id"] != "ab" * 16
    assert roots[0]["links"] == [{"trace_id": "ab" * 16, "span_id": "cd" * 8}]
    # database spans are there too
    assert any(s["attributes"].get("db.system") or s["attributes"].get("db.system.name") for s in spans)

    # and the launcher prints it as a waterfall, found by the request id
    printed = subprocess.run(
        [sys.executable, str(ROOT / "manage_all.py"), "trace", request_id],
        env={**os.environ, "VAR_DIR": str(system.var_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    assert f"trace {spans[0]['trace_id']}" in printed.stdout
    for service in wanted:
        assert f"{service}: " in printed.stdout


def test_an_error_response_names_its_request_and_trace(anonymous: Client) -> None:
    response = anonymous.get("/api/v1/orders/999999999/")

    assert response.status_code in {401, 404}
    error = response.json()["error"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert len(error["trace_id"]) == 32


def span(
    span_id: str, parent: str | None, service: str, name: str, start_ms: float, end_ms: float, **extra: Any
) -> dict:
    base = 1_700_000_000_000_000_000
    return {
        "trace_id": "t" * 32,
        "span_id": span_id,
        "parent_id": parent,
        "service": service,
        "name": name,
        "kind": "server",
        "start_ns": base + int(start_ms * 1e6),
        "end_ns": base + int(end_ms * 1e6),
        "status": "unset",
        "error": "",
        "request_id": "",
        **extra,
    }


def test_the_waterfall_indents_children_orders_by_start_and_marks_errors() -> None:
    spans = [
        span("c2", "root", "payments", "POST api/v1/payments/", 30, 50, status="error", error="card declined"),
        span("root", None, "gateway", "POST ^api/", 0, 100),
        span("c1", "root", "orders", "POST api/v1/orders/", 10, 20),
        span("g1", "c1", "orders", "INSERT", 12, 12.5),
        span("lost", "elsewhere", "users", "run/events.handle", 90, 95),
    ]

    lines = manage_all.format_waterfall(spans).splitlines()

    assert lines[0] == f"trace {'t' * 32}: 5 spans, 100.0 ms, services: gateway, orders, payments, users, 1 error(s)"
    operations = [line[53:] for line in lines[2:] if line]  # after the offset, duration and bar columns
    assert [operation.split(" [")[0].strip() for operation in operations] == [
        "gateway: POST ^api/",
        "orders: POST api/v1/orders/",
        "orders: INSERT",
        "payments: POST api/v1/payments/",
        "users: run/events.handle",
    ]
    by_name = {line[53:].split(" [")[0].strip(): line for line in lines[2:] if line}
    assert by_name["orders: INSERT"][53:].startswith("    orders: INSERT")  # two levels down
    assert by_name["payments: POST api/v1/payments/"].startswith("     30.0      20.0")
    assert by_name["payments: POST api/v1/payments/"].endswith("!! ERROR: card declined")
    assert by_name["users: run/events.handle"].endswith("(parent not recorded)")


def test_a_trace_is_found_by_trace_id_or_request_id(tmp_path: Path) -> None:
    wanted = [span("a", None, "gateway", "GET", 0, 1, request_id="req-1234abcd"), span("b", "a", "users", "GET", 0, 1)]
    other = {**span("c", None, "gateway", "GET", 0, 1), "trace_id": "o" * 32}
    (tmp_path / "gateway-1.jsonl").write_text("".join(json.dumps(s) + "\n" for s in [wanted[0], other]))
    (tmp_path / "users-2.jsonl.1").write_text(json.dumps(wanted[1]) + "\n" + '{"trace_id": "cut sh')

    assert manage_all.read_trace_spans(tmp_path, "req-1234abcd") == wanted
    assert manage_all.read_trace_spans(tmp_path, "T" * 32) == wanted
    assert manage_all.read_trace_spans(tmp_path, "nothing") == []
