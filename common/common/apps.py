from django.apps import AppConfig


class CommonConfig(AppConfig):
    """Installed in every service for its management commands and schema extension; it defines no models."""

    name = "common"
    verbose_name = "Shared infrastructure"

    def ready(self) -> None:
        from common import schema  # noqa: F401  registers the OpenAPI description of the service assertion
