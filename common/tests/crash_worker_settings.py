"""The test project's settings for a real Celery worker process on RabbitMQ (test_delivery_limit): a service
name, queue and database of that test alone, and a handler that kills its worker."""

import os

from common.events import event_queue
from tests.settings import *  # noqa: F403

SERVICE_NAME = os.environ["CRASH_TEST_SERVICE"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["CRASH_TEST_DATABASE"]}}
EVENT_HANDLERS = {
    f"thing.happened.{SERVICE_NAME}": "tests.handlers.record",
    f"thing.crashes.{SERVICE_NAME}": "tests.crash_handlers.exit_worker",
    f"thing.hangs.{SERVICE_NAME}": "tests.crash_handlers.hang",
}
EVENT_DELIVERY_LIMIT = int(os.environ["CRASH_TEST_DELIVERY_LIMIT"])
CELERY_BROKER_URL = os.environ["BROKER_URL"]
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 3  # hard limit only: the hanging handler must overrun it quickly
CELERY_TASK_DEFAULT_QUEUE = f"{SERVICE_NAME}.tasks"
CELERY_TASK_QUEUES = [event_queue(SERVICE_NAME, EVENT_HANDLERS, delivery_limit=EVENT_DELIVERY_LIMIT)]
CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE = "classic"
