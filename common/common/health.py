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


@dataclasses.dataclass
class Broker(HealthCheck):
    """The Celery broker accepts a connection, whichever transport is configured (RabbitMQ or files)."""

    timeout: datetime.timedelta = dataclasses.field(default=datetime.timedelta(seconds=3), repr=False)

    def run(self) -> None:
        try:
            with Connection(
                settings.CELERY_BROKER_URL,
                transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
                connect_timeout=self.timeout.total_seconds(),
            ) as connection:
                # One immediate retry, within the check's own timeout: kombu's default is to sleep 2 s
                # first, longer than a refused connection takes to report and than a short timeout allows.
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=self.timeout.total_seconds())
        except Exception as exc:  # kombu surfaces transport-specific errors; any of them means "down"
            raise ServiceUnavailable("Broker unreachable") from exc


class ServiceHealthView(HealthCheckView):
    """django-health-check's view, with JSON keyed by plain check names (``database``, ``cache``,
    ``broker``) rather than the checks' Python reprs, so monitors and the gateway's /health can rely on
    them."""

    def render_to_response_json(self, status: int) -> JsonResponse:
        return JsonResponse(
            {_check_name(result.check): "ok" if result.error is None else str(result.error) for result in self.results},
            status=status,
        )


def _check_name(check: HealthCheck) -> str:
    name = type(check).__name__.lower()
    alias = getattr(check, "alias", "default")
    return name if alias == "default" else f"{name}:{alias}"


SERVICE_CHECKS = (
    "health_check.checks.Database",
    "health_check.checks.Cache",
    "common.health.Broker",
)
