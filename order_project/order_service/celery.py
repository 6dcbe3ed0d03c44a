import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "order_service.settings")

app = Celery("order_service")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _configure_tracing(**kwargs: Any) -> None:
    # In each pool process, after the fork: the span exporter's thread would not survive one.
    from django.conf import settings

    from common.tracing import configure_tracing

    configure_tracing(settings.SERVICE_NAME)
