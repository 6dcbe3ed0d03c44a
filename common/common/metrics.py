"""Prometheus metrics of a service, served at ``/metrics`` to internal networks only (:func:`metrics_view`).

What is measured:
- HTTP requests by route and status, and their latency (:class:`MetricsMiddleware`). The route is the URL
  pattern's name (``orders:order-detail``; the pattern itself when unnamed), never the raw path with its
  ids, so the label values stay few.
- Celery tasks: outcome and duration by task name (task_prerun / task_postrun signals, connected when the
  ``common`` app is ready, so every worker has them).
- At scrape time, from the same figures the health checks show: outbox pending count and the age of the
  oldest pending event, dead-letter depth per consumer queue.
- At scrape time, the circuit breaker of each service this one calls (``service_client_breaker_state``,
  shaped like the gateway's ``gateway_breaker_state``) and the health of its instances
  (``service_client_instance_up``), as the scraped process sees them (common.http's tracked clients).

gunicorn runs several worker processes and a Celery worker several pool processes; a scrape reaches one
of them. With ``PROMETHEUS_MULTIPROC_DIR`` set (the launcher sets it per service for the web process and its
worker, and empties it before they start) every process writes its values to memory-mapped files there
and the scraped one sums them all: the web process also reports its worker's task metrics. Without it (the
test client, ``runserver``) the values live in this process.

The gateway has its own request metrics and breaker states (``gateway_project/proxy/metrics.py``) and
shares only the address guard, :func:`metrics_allowed`.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from celery import signals
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_ALLOWED_NETWORKS = ("127.0.0.0/8", "::1/128")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "Requests answered, by route (URL pattern name), method and status.",
    ["route", "method", "status"],
    registry=_REGISTRY,
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from the request reaching the service's middleware to its response, by route.",
    ["route"],
    buckets=_BUCKETS,
    registry=_REGISTRY,
)
CELERY_TASKS = Counter(
    "celery_tasks_total",
    "Celery tasks run by this service's worker, by task name and outcome (SUCCESS, FAILURE, RETRY...).",
    ["task", "outcome"],
    registry=_REGISTRY,
)
CELERY_TASK_DURATION = Histogram(
    "celery_task_duration_seconds",
    "Run time of this service's Celery tasks, by task name.",
    ["task"],
    buckets=_BUCKETS,
    registry=_REGISTRY,
)


# HTTP


def route_label(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    if match.url_name:
        return str(match.view_name)
    return "/" + str(match.route).lstrip("^") if match.route else "unnamed"


class MetricsMiddleware:
    """First in ``MIDDLEWARE``: it sees every answer, including the error pages of the middleware below it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in _METHODS else "OTHER"
        route = route_label(request)
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)
        return response


# Celery

_task_started: dict[str, float] = {}
_task_lock = threading.Lock()


@signals.task_prerun.connect(weak=False)
def _task_prerun(task_id: str | None = None, **kwargs: Any) -> None:
    if task_id:
        with _task_lock:
            _task_started[task_id] = time.perf_counter()


@signals.task_postrun.connect(weak=False)
def _task_postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **kwargs: Any) -> None:
    with _task_lock:
        started = _task_started.pop(task_id or "", None)
    name = str(getattr(task, "name", None) or "unknown")
    CELERY_TASKS.labels(name, state or "UNKNOWN").inc()
    if started is not None:
        CELERY_TASK_DURATION.labels(name).observe(time.perf_counter() - started)


@signals.worker_process_shutdown.connect(weak=False)  # a prefork pool process
@signals.worker_shutdown.connect(weak=False)  # the worker itself (the solo pool's only process)
def _worker_process_gone(**kwargs: Any) -> None:
    """A stopping worker process's live gauges go (e.g. ``runtime_config_version``, one sample per process),
    as gunicorn's child_exit does for web workers (common.gunicorn_hooks); its counters stay."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())


# At scrape time


class EventStateCollector(Collector):
    """Outbox and dead-letter figures, read when scraped (from the database and the broker), as the health
    checks read them: a gauge kept in memory would be stale in every process but the relay's."""

    def collect(self) -> Iterator[Metric]:
        from common.events import has_outbox
        from common.health import DeadLetters
        from common.outbox import outbox_stats

        if has_outbox():
            try:
                stats = outbox_stats()
            except Exception:  # an unusable database: the health check reports it; the scrape goes on
                logger.exception("metrics: reading the outbox failed")
            else:
                yield GaugeMetricFamily("outbox_pending_events", "Events recorded but not yet sent.", stats.pending)
                yield GaugeMetricFamily(
                    "outbox_oldest_pending_seconds",
                    "Age of the oldest event not yet sent; 0 when none waits.",
                    stats.oldest_pending_seconds or 0.0,
                )
        check = DeadLetters(timeout=datetime.timedelta(seconds=2))
        check.run()  # never raises: an unreachable broker leaves the counts unknown (None)
        counts = check.stats.get("dead_letters")
        family = GaugeMetricFamily(
            "dead_letter_messages", "Events waiting in each consumer queue's dead-letter queue.", labels=["queue"]
        )
        for queue, count in sorted(counts.items()) if isinstance(counts, dict) else ():
            if isinstance(count, int):  # None: the broker did not answer, the depth is unknown
                family.add_metric([str(queue)], float(count))
        yield family


_REGISTRY.register(EventStateCollector())

BREAKER_STATES = ("closed", "open", "half_open")


class ServiceClientCollector(Collector):
    """The service clients of this process (common.http.service_client): 1 for each called service's
    current breaker state and 0 for the others (the enum-as-gauge form, so
    ``service_client_breaker_state{state="open"} == 1`` alerts), and 1 per instance the balancer would
    pick (0 while ejected: a failed health check or a refused connection)."""

    def collect(self) -> Iterator[Metric]:
        from common.http import tracked_clients  # requests and DRF's errors: loaded when scraped

        states = GaugeMetricFamily(
            "service_client_breaker_state",
            "Circuit breaker state per called service: 1 for the current state.",
            labels=["target", "state"],
        )
        instances = GaugeMetricFamily(
            "service_client_instance_up",
            "Instances of each called service: 1 when calls may go to it, 0 while it is ejected.",
            labels=["target", "instance"],
        )
        now = time.monotonic()
        for client in sorted(tracked_clients(), key=lambda each: each.audience):
            try:
                current = client.breaker.state
            except Exception:  # a broken threshold source must not break the whole scrape
                logger.exception("metrics: reading the breaker of %s failed", client.audience)
            else:
                for state in BREAKER_STATES:
                    states.add_metric([client.audience, state], 1.0 if current == state else 0.0)
            for instance in client.balancer.instances:
                instances.add_metric([client.audience, instance.url], 1.0 if instance.available(now) else 0.0)
        yield states
        yield instances


_REGISTRY.register(ServiceClientCollector())


def exposition() -> bytes:
    """The metrics in Prometheus' text format: every process's in multiprocess mode, else this one's."""
    if not os.environ.get(MULTIPROC_ENV):
        return generate_latest(_REGISTRY)
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(EventStateCollector())
    registry.register(ServiceClientCollector())
    return generate_latest(registry)


# The endpoint and its guard


@functools.lru_cache(maxsize=4)
def _networks(values: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values if value.strip())


def metrics_allowed(request: HttpRequest) -> bool:
    """Only the socket's peer address counts, never a header. A request that came through a proxy (it
    carries forwarding headers) is refused even from an allowed address: a reverse proxy on the same host
    would otherwise make every public request look local."""
    meta = request.META
    if "HTTP_X_FORWARDED_FOR" in meta or "HTTP_FORWARDED" in meta or "HTTP_X_REAL_IP" in meta:
        return False
    try:
        address = ipaddress.ip_address(meta.get("REMOTE_ADDR", "").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    allowed = tuple(getattr(settings, "METRICS_ALLOWED_NETWORKS", DEFAULT_ALLOWED_NETWORKS))
    return any(address in network for network in _networks(allowed))


def metrics_view(request: HttpRequest) -> HttpResponseBase:
    from common.errors import error_response  # DRF-dependent: imported when used, not by the app registry

    if not metrics_allowed(request):
        # The same answer as any unknown path: nothing tells the public this exists.
        return error_response(404, "not_found", "No such resource.")
    if request.method not in ("GET", "HEAD"):
        return error_response(405, "method_not_allowed", "This method is not allowed on this path.")
    response = HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
