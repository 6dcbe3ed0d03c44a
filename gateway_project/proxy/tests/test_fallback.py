"""The stale copies' bound: invented query strings cannot fill the cache (proxy/fallback.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from proxy.tests.upstream_stub import StubUpstream
from proxy.tests.utils import body_of, closed_port_url


@pytest.fixture(autouse=True)
def _no_active_checks(settings: Any) -> None:
    settings.UPSTREAM_CHECK_INTERVAL = 0  # the closed port below is refused on use, not by a health check


def test_no_more_than_stale_max_copies_are_taken_per_window_however_many_targets_are_invented(
    client: Client, orders: StubUpstream, settings: Any
) -> None:
    # given a bound of 2 copies, and three anonymous targets answered 200 and read to their end
    settings.STALE_MAX_COPIES = 2
    orders.reply("/api/v1/products/", body=b'{"results": ["mug"]}', headers=[("Content-Type", "application/json")])
    for invented in ("a", "b", "c"):
        assert body_of(client.get(f"/api/v1/products/?x={invented}")) == b'{"results": ["mug"]}'

    # when the service goes down
    settings.UPSTREAMS = {**settings.UPSTREAMS, "orders": closed_port_url()}

    # then the first two are served from their copies, the third was never kept
    assert client.get("/api/v1/products/?x=a")["X-Cache"] == "stale"
    assert client.get("/api/v1/products/?x=b")["X-Cache"] == "stale"
    assert client.get("/api/v1/products/?x=c").status_code == 503
