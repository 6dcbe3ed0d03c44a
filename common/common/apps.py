from django.apps import AppConfig


class CommonConfig(AppConfig):
    """Installed in every service for its management commands and schema extension; it defines no models."""

    name = "common"
    verbose_name = "Shared infrastructure"

    def ready(self) -> None:
        from common import (
            metrics,  # noqa: F401  connects the Celery task metrics (signals) in every worker
            schema,  # noqa: F401  registers the OpenAPI description of the service assertion
        )
