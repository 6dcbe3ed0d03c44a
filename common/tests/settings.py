"""The smallest Django project that installs ``common``, for the library's own tests (not shipped: the package
is ``common`` only). Fixed values, no environment: the helpers that read the environment are tested directly."""

from common.events import event_queue

SERVICE_NAME = "test"
SECRET_KEY = "common-tests-secret-key"
INTERNAL_AUTH_SECRET = "common-tests-internal-auth-secret-0123456789"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "common",
    "tests.eventstore",
]

MIDDLEWARE = [
    "common.metrics.MetricsMiddleware",
    "common.request_id.RequestIdMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "tests.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
APPEND_SLASH = False

# As in every service.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["common.internal_auth.ServiceAssertionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["common.internal_auth.IsEndUser"],
    "DEFAULT_SCHEMA_CLASS": "common.schema.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "common.errors.drf_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

EVENT_HANDLERS = {
    "thing.happened": "tests.handlers.record",
    "thing.failed": "tests.handlers.fail_transiently",
    "thing.broken": "tests.handlers.fail_permanently",
}

OUTBOX_MODEL = "eventstore.OutboxEvent"
INBOX_MODEL = "eventstore.InboxEvent"
EVENT_MAX_ATTEMPTS = 3
EVENT_RETRY_BACKOFF = 0.01
EVENT_RETRY_BACKOFF_MAX = 0.05
OUTBOX_RETRY_BACKOFF = 1.0
OUTBOX_RETRY_BACKOFF_MAX = 8.0

# An in-memory broker unless a test switches to a private filesystem broker (the ``event_broker`` fixture,
# common.testing.EventBroker): nothing a test publishes can reach the development broker or a RabbitMQ.
CELERY_BROKER_URL = "memory://localhost/"
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = f"{SERVICE_NAME}.tasks"
CELERY_TASK_QUEUES = [event_queue(SERVICE_NAME, EVENT_HANDLERS)]
