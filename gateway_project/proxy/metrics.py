"""The gateway's Prometheus metrics, served at ``/metrics`` to internal networks only (see
:func:`proxy.observability.metrics_view`).

gunicorn runs several worker processes and a scrape reaches one of them, so every worker writes its
values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) and
the scraped worker sums them all. ``gunicorn.conf.py`` gives each gunicorn master its own directory under
``VAR_DIR/metrics/`` before any worker starts, wipes it, and tells prometheus_client when a worker dies.
Without that variable (the test client, ``runserver``) the values live in this process.

Everything is derived from the final response of each request (see ``observability.AccessLogMiddleware``),
so the rate limiter, the breakers and the proxy need not call this module: a 429 is a rate-limited
request, a 502/503/504 whose error code starts with ``upstream_`` (made by the gateway: nothing usable came
back) or a 5xx a service answered itself is an upstream error. Breaker states are read at scrape time.

Label values are bounded: a route is its prefix from the route table (never the raw path with ids), a
method outside the known ones is ``OTHER``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.routes import ALL_METHODS

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
BREAKER_STATES = ("closed", "open", "half_open")

# Metric objects live in a registry of their own; in multiprocess mode a scrape reads the files instead.
_REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "gateway_requests_total",
    "Requests answered by the gateway, by route prefix, method and status.",
    ["route", "method", "status"],
    registry=_REGISTRY,
)
LATENCY = Histogram(
    "gateway_request_duration_seconds",
    "Time from the request reaching the gateway to the last byte of its response, by route prefix.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=_REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total",
    "Requests a service failed: the gateway's upstream_* errors (unreachable, timeout, broken exchange, "
    "breaker open) and 5xx answers of the service itself (code status_5xx).",
    ["service", "code"],
    registry=_REGISTRY,
)
RATE_LIMITED = Counter(
    "gateway_rate_limited_total",
    "Requests refused with 429 by the gateway's rate limits, by route prefix.",
    ["route"],
    registry=_REGISTRY,
)

# labels() validates and locks on every call; the children for a label tuple never change, so keep them.
_request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def record(
    *, route: str, method: str, status: int, duration: float, service: str | None, error_code: str | None
) -> None:
    """Count one answered request."""
    if method not in ALL_METHODS:
        method = "OTHER"
    key = (route, method, status)
    children = _request_children.get(key)
    if children is None:
        children = (REQUESTS.labels(route, method, str(status)), LATENCY.labels(route))
        _request_children[key] = children
    counter, histogram = children
    counter.inc()
    histogram.observe(duration)
    if status == 429:
        RATE_LIMITED.labels(route).inc()
    elif status >= 500 and service:
        if error_code and error_code.startswith("upstream_"):
            UPSTREAM_ERRORS.labels(service, error_code).inc()
        elif error_code is None:  # no gateway error envelope: the service answered this itself
            UPSTREAM_ERRORS.labels(service, "status_5xx").inc()


def breaker_states() -> dict[str, str]:
    """service -> closed/open/half_open, from ``proxy.breakers`` when that module exists."""
    if importlib.util.find_spec("proxy.breakers") is None:
        return {}
    try:
        states = importlib.import_module("proxy.breakers").states()
    except Exception:  # a broken collector must not break the whole scrape
        logger.exception("reading the breaker states failed")
        return {}
    return {str(service): str(state) for service, state in states.items()}


class BreakerCollector(Collector):
    """``gateway_breaker_state{service, state}``: 1 for each service's current state, 0 for the others (the
    usual enum-as-gauge form, so ``gateway_breaker_state{state="open"} == 1`` alerts)."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "gateway_breaker_state",
            "Circuit breaker state per upstream service: 1 for the current state.",
            labels=["service", "state"],
        )
        for service, current in sorted(breaker_states().items()):
            for state in BREAKER_STATES:
                family.add_metric([service, state], 1.0 if current == state else 0.0)
        yield family


_REGISTRY.register(BreakerCollector())


def exposition() -> bytes:
    """The metrics in Prometheus' text format: every worker's in multiprocess mode, else this process's."""
    if not os.environ.get(MULTIPROC_ENV):
        return generate_latest(_REGISTRY)
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(BreakerCollector())
    return generate_latest(registry)
