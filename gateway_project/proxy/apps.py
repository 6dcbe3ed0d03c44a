from django.apps import AppConfig


class ProxyConfig(AppConfig):
    """The gateway's forwarding of API, admin, static and docs paths to the services; it defines no
    models."""

    name = "proxy"
    verbose_name = "Proxy"
