"""``up --scale orders=2``: two order instances behind the gateway (the session's system runs them), both
reached; in etcd mode (CI's real mode, ETCD_URL set) both registered themselves."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import requests

import manage_all
from common import discovery


def test_two_order_instances_both_get_traffic_through_the_gateway(system: manage_all.System, gateway: str) -> None:
    first, second = system.instance_urls("orders")
    assert manage_all.health(f"{second}/health/")[0] == 200
    if os.environ.get("ETCD_URL"):
        registry = discovery.EtcdRegistry(os.environ["ETCD_URL"], prefix=system.base_env["ETCD_PREFIX"])
        assert sorted(registry.urls("orders")) == sorted([first, second])

    # the gateway lists both (with etcd: from its next check round after the second registered)
    def listed() -> set[str]:
        found = requests.get(f"{gateway}/health", timeout=10).json()["upstreams"]["services"]["orders"]["instances"]
        return {instance["url"] for instance in found}

    deadline = time.monotonic() + 15
    while listed() != {first, second} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert listed() == {first, second}

    # when: calls through the gateway, each marked so the instances' access logs show who served it
    probe = uuid.uuid4().hex
    for _ in range(8):
        assert requests.get(f"{gateway}/api/v1/products/?probe={probe}", timeout=10).status_code == 200

    # then: both instances served some (their access log lines may trail the answers by a moment)
    log_dir = system.var_dir / "log"

    def served() -> dict[str, int]:
        return {
            name: (log_dir / f"{name}.log").read_text(errors="replace").count(probe) for name in ("orders", "orders-2")
        }

    deadline = time.monotonic() + 3
    while sum(served().values()) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    counts = served()
    assert counts["orders"] > 0
    assert counts["orders-2"] > 0
    assert sum(counts.values()) == 8


def test_scale_accepts_service_names_singular_or_plural_and_refuses_the_rest() -> None:
    assert manage_all.parse_scale(["order=2", "users=3"]) == {"orders": 2, "users": 3}
    for bad in ("gateway=2", "carts=2", "orders=0", "orders=two", "orders"):
        with pytest.raises(manage_all.LaunchError, match="--scale"):
            manage_all.parse_scale([bad])
