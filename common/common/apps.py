from django.apps import AppConfig


class CommonConfig(AppConfig):
    """Installed in every service for its management commands and templates; it defines no models."""

    name = "common"
    verbose_name = "Shared infrastructure"
