"""Health checks shared by the services (django-health-check 4 style)."""

from __future__ import annotations

import dataclasses
import datetime

from django.conf import settings
from django.http import JsonResponse
from health_check.base import HealthCheck
from health_check.exceptions import ServiceUnavailable
from health_check.views import HealthCheckView
from kombu import Connection

from common.dead_letters import dead_letter_count
from common.events import has_outbox
from common.outbox import outbox_stats


@dataclasses.dataclass
class Broker(HealthCheck):
    """The Celery broker accepts a connection, whichever transport is configured (RabbitMQ or files)."""

    timeout: datetime.timedelta = dataclasses.field(default=datetime.timedelta(seconds=3), repr=False)

    def run(self) -> None:
        try:
            with Connection(
                settings.CELERY_BROKER_URL,
                transport=getattr(settings, "CELERY_BROKER_TRANSPORT", None),
                transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
                connect_timeout=self.timeout.total_seconds(),
            ) as connection:
                # One immediate retry, within the check's own timeout: kombu's default is to sleep 2 s
                # first, longer than a refused connection takes to report and than a short timeout allows.
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=self.timeout.total_seconds())
        except Exception as exc:  # kombu surfaces transport-specific errors; any of them means "down"
            raise ServiceUnavailable("Broker unreachable") from exc


@dataclasses.dataclass
class Outbox(HealthCheck):
    """Events recorded but not yet sent: their count and the age of the oldest. Fails when the oldest has
    waited longer than ``OUTBOX_MAX_LAG_SECONDS`` (the relay is down or the broker has been for a while)."""

    stats: dict[str, object] = dataclasses.field(default_factory=dict, repr=False)

    def run(self) -> None:
        if not has_outbox():
            return
        stats = outbox_stats()
        self.stats = {"outbox": stats.as_dict()}
        max_lag = float(getattr(settings, "OUTBOX_MAX_LAG_SECONDS", 300))
        if stats.oldest_pending_seconds is not None and stats.oldest_pending_seconds > max_lag:
            raise ServiceUnavailable(f"Outbox lagging: oldest pending event {stats.oldest_pending_seconds:.0f}s old")


@dataclasses.dataclass
class DeadLetters(HealthCheck):
    """How many events wait in each consumer queue's dead-letter queue. Never fails: a dead letter needs a
    person, not a restart; the count is there for monitors and the admin."""

    timeout: datetime.timedelta = dataclasses.field(default=datetime.timedelta(seconds=3), repr=False)
    stats: dict[str, object] = dataclasses.field(default_factory=dict, repr=False)

    def run(self) -> None:
        queues = [queue.name for queue in getattr(settings, "CELERY_TASK_QUEUES", None) or ()]
        if not queues:
            return
        counts: dict[str, int | None] = {}
        try:
            with Connection(
                settings.CELERY_BROKER_URL,
                transport=getattr(settings, "CELERY_BROKER_TRANSPORT", None),
                transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
                connect_timeout=self.timeout.total_seconds(),
            ) as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=self.timeout.total_seconds())
                for queue in queues:
                    counts[queue] = dead_letter_count(queue, connection)
        except Exception:  # the broker check reports an unreachable broker; here the count is just unknown
            counts = dict.fromkeys(queues)
        self.stats = {"dead_letters": counts}


@dataclasses.dataclass
class Live(HealthCheck):
    """Liveness: the process answers HTTP. It checks no dependency on purpose: a database or broker outage
    must make the instance not ready (taken out of balancing), not dead (restarted), since a restart
    cures neither."""

    def run(self) -> None:
        return None


class ServiceHealthView(HealthCheckView):
    """django-health-check's view, with JSON keyed by plain check names (``database``, ``cache``,
    ``broker``) rather than the checks' Python reprs, so monitors and the gateway's /health can rely on
    them. Checks that measure something (the outbox, dead letters) add their figures under ``events``."""

    def render_to_response_json(self, status: int) -> JsonResponse:
        body: dict[str, object] = {
            _check_name(result.check): "ok" if result.error is None else str(result.error) for result in self.results
        }
        figures: dict[str, object] = {}
        for result in self.results:
            figures.update(getattr(result.check, "stats", None) or {})
        if figures:
            body["events"] = figures
        return JsonResponse(body, status=status)


def _check_name(check: HealthCheck) -> str:
    name = type(check).__name__.lower()
    alias = getattr(check, "alias", "default")
    return name if alias == "default" else f"{name}:{alias}"


SERVICE_CHECKS = (
    "health_check.checks.Database",
    "health_check.checks.Cache",
    "common.health.Broker",
    "common.health.Outbox",
    "common.health.DeadLetters",
)
# Readiness: what a request needs to succeed (``/health/ready/``, and ``/health/`` for the launcher and the
# gateway's balancer, which check it).
READY_CHECKS = SERVICE_CHECKS
LIVE_CHECKS = ("common.health.Live",)
