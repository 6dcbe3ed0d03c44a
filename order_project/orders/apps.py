from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"
    verbose_name = "Orders"

    def ready(self) -> None:
        # Registers the OpenAPI description of the service assertion (drf-spectacular extension).
        from orders import schema  # noqa: F401
