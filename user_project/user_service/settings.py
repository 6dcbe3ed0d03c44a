"""Settings of the user service: accounts, sign-in (it issues the JWTs and publishes their JWKS) and the
emails sent to users.

Every value is read from the environment with a working development default; the README lists them all.
"""

from pathlib import Path

from decouple import Csv, config

from common import settings as envs
from common.events import event_queue

BASE_DIR = Path(__file__).resolve().parent.parent
SERVICE_NAME = "users"
VAR_DIR = envs.var_dir(BASE_DIR)

SECRET_KEY = envs.secret("SECRET_KEY", var=VAR_DIR, scope=SERVICE_NAME)
INTERNAL_AUTH_SECRET = envs.secret("INTERNAL_AUTH_SECRET", var=VAR_DIR)
DEBUG = config("DEBUG", default=False, cast=bool)
ALLOWED_HOSTS = config("ALLOWED_HOSTS", default="127.0.0.1,localhost,[::1]", cast=Csv())
CSRF_TRUSTED_ORIGINS = config("CSRF_TRUSTED_ORIGINS", default="", cast=Csv())
# Only the gateway reaches this service in a deployment, and it always overwrites these headers; links
# and redirects (pagination, admin) then point at the gateway's public address.
USE_X_FORWARDED_HOST = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "health_check",
    "common",
    "users",
    "notifications",
    "messaging",
]

MIDDLEWARE = [
    "common.metrics.MetricsMiddleware",  # first: it counts every answer, the error pages of the others too
    "common.request_id.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "user_service.urls"
WSGI_APPLICATION = "user_service.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": envs.database(default_name=SERVICE_NAME, var=VAR_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CACHES = {"default": envs.cache(key_prefix=SERVICE_NAME)}

AUTH_USER_MODEL = "users.User"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Each service's admin and static files live under their own prefix, so the gateway can route
# /admin/users/ and /static/users/ here unchanged and the services' cookies never collide.
STATIC_URL = f"/static/{SERVICE_NAME}/"
# WhiteNoise serves the apps' static files straight from their folders; a deployment that prefers
# collected, compressed files sets STATIC_ROOT and runs collectstatic.
STATIC_ROOT = config("STATIC_ROOT", default=None)
WHITENOISE_USE_FINDERS = True
SESSION_COOKIE_NAME = f"{SERVICE_NAME}_sessionid"
SESSION_COOKIE_PATH = f"/admin/{SERVICE_NAME}/"
CSRF_COOKIE_NAME = f"{SERVICE_NAME}_csrftoken"
CSRF_COOKIE_PATH = SESSION_COOKIE_PATH
SESSION_COOKIE_HTTPONLY = True
# Browsers reach the admin through the gateway, over HTTPS in production: cookies only travel encrypted.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = config("SECURE_COOKIES", default=envs.is_production(), cast=bool)
APPEND_SLASH = False
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["common.internal_auth.ServiceAssertionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["common.internal_auth.IsEndUser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "common.errors.drf_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "common.schema.AutoSchema",  # documents every operation's error answers
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_THROTTLE_RATES": {
        "login": config("LOGIN_RATE", default="10/min"),  # sign-in attempts per client address
    },
    # The gateway is the one proxy in front of the service: the right-most X-Forwarded-For entry is its.
    "NUM_PROXIES": 1,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "User service",
    "DESCRIPTION": "Accounts and sign-in. Called through the gateway at /api/v1/users/ and /api/v1/auth/.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # A CharField that refuses "" says so (minLength 1), as the validation does.
    "ENFORCE_NON_BLANK_FIELDS": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Tokens: EdDSA (Ed25519) JWTs. The private key is a PEM in JWT_PRIVATE_KEY; in development one is
# generated under var/secrets/users/ on first start. `manage.py signing_keys` rotates to keys kept in the
# database (see users/keys.py).
JWT_PRIVATE_KEY = envs.secret(
    "JWT_PRIVATE_KEY", var=VAR_DIR, scope=SERVICE_NAME, generate=envs.new_ed25519_private_key_pem
)
JWT_ISSUER = config("JWT_ISSUER", default="shop-users")
JWT_AUDIENCE = config("JWT_AUDIENCE", default="shop-api")
# Short-lived: the gateway verifies access tokens without asking us, so one stays usable until it expires,
# sign-out and reuse revocation included.
JWT_ACCESS_TOKEN_LIFETIME = config("JWT_ACCESS_TOKEN_LIFETIME", default=300, cast=int)  # seconds
# Each refresh token lives this long from its issue; rotation hands out a new one on every refresh.
JWT_REFRESH_TOKEN_LIFETIME = config("JWT_REFRESH_TOKEN_LIFETIME", default=14 * 24 * 3600, cast=int)
# A rotated-in key is published at once but signs only after this delay, so every verifier can learn it
# first: keep it above the gateway's JWKS_MIN_REFRESH_INTERVAL.
JWT_KEY_ACTIVATION_DELAY = config("JWT_KEY_ACTIVATION_DELAY", default=15, cast=int)  # seconds
# Per account: this many failed sign-ins within the window (from the first attempt) lock the account's
# sign-in until the window ends; counted in the database, shared by every process; see users/throttling.py.
LOGIN_FAILURE_LIMIT = config("LOGIN_FAILURE_LIMIT", default=5, cast=int)
LOGIN_FAILURE_WINDOW = config("LOGIN_FAILURE_WINDOW", default=300, cast=int)  # seconds

# Email: written to files under var/mail/ unless an SMTP host is configured.
EMAIL_HOST = config("EMAIL_HOST", default="")
EMAIL_PORT = config("EMAIL_PORT", default=587, cast=int)
EMAIL_HOST_USER = config("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = config("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = config("EMAIL_USE_TLS", default=True, cast=bool)
EMAIL_TIMEOUT = 10
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.filebased.EmailBackend"
)
EMAIL_FILE_PATH = VAR_DIR / "mail"
DEFAULT_FROM_EMAIL = config("DEFAULT_FROM_EMAIL", default="Shop <no-reply@shop.localhost>")

# Events this service reacts to, and the handler for each.
EVENT_HANDLERS = {
    "user.created": "notifications.handlers.on_user_created",
    "order.confirmed": "notifications.handlers.on_order_confirmed",
    "order.cancelled": "notifications.handlers.on_order_cancelled",
    "config.changed": "common.runtime_config.on_config_changed",
}

# Events (README "Events"): the outbox written by publish_event and sent by `manage.py relay_outbox`, the
# inbox that makes handling idempotent, and the retry/dead-letter policy of this service's event worker.
OUTBOX_MODEL = "messaging.OutboxEvent"
INBOX_MODEL = "messaging.InboxEvent"
OUTBOX_POLL_INTERVAL = config("OUTBOX_POLL_INTERVAL", default=0.2, cast=float)  # seconds, when idle
OUTBOX_RETRY_BACKOFF = config("OUTBOX_RETRY_BACKOFF", default=1.0, cast=float)  # seconds, doubled per failure
OUTBOX_RETRY_BACKOFF_MAX = config("OUTBOX_RETRY_BACKOFF_MAX", default=60.0, cast=float)
OUTBOX_MAX_LAG_SECONDS = config("OUTBOX_MAX_LAG_SECONDS", default=300.0, cast=float)  # health fails beyond
# A claimed row is re-sent after this long if its relay died before marking it sent (the inbox absorbs the
# duplicate); longer than the slowest confirmed publish.
OUTBOX_LEASE_SECONDS = config("OUTBOX_LEASE_SECONDS", default=30.0, cast=float)
OUTBOX_CONFIRM_TIMEOUT = config("OUTBOX_CONFIRM_TIMEOUT", default=10.0, cast=float)  # below the lease
OUTBOX_BATCH_SIZE = config("OUTBOX_BATCH_SIZE", default=100, cast=int)
OUTBOX_RETENTION_DAYS = config("OUTBOX_RETENTION_DAYS", default=7, cast=int)  # sent rows are pruned after
EVENT_MAX_ATTEMPTS = config("EVENT_MAX_ATTEMPTS", default=5, cast=int)  # then the event is dead-lettered
EVENT_RETRY_BACKOFF = config("EVENT_RETRY_BACKOFF", default=1.0, cast=float)  # seconds, doubled per failure
EVENT_RETRY_BACKOFF_MAX = config("EVENT_RETRY_BACKOFF_MAX", default=60.0, cast=float)
# RabbitMQ: deliveries of one attempt without an outcome (its worker died, or overran the hard time limit)
# before RabbitMQ dead-letters the message itself; above what restarts and kills cause (README "Events").
EVENT_DELIVERY_LIMIT = config("EVENT_DELIVERY_LIMIT", default=10, cast=int)

CELERY_BROKER_URL = envs.broker_url()
CELERY_BROKER_TRANSPORT = envs.broker_transport(CELERY_BROKER_URL)
CELERY_BROKER_TRANSPORT_OPTIONS = envs.broker_transport_options(CELERY_BROKER_URL, var=VAR_DIR)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 100
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = f"{SERVICE_NAME}.tasks"
CELERY_TASK_QUEUES = [event_queue(SERVICE_NAME, EVENT_HANDLERS, delivery_limit=EVENT_DELIVERY_LIMIT)]
# Celery declares its (unused: see common/tasks.py) native delayed delivery queues once it sees a quorum
# queue: classic ones are cheaper than 28 quorum queues.
CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE = "classic"

# Runtime settings from the gateway's config center (common/runtime_config.py; README "Config center"):
# read with runtime_config.get(key, <setting>), kept current by a watcher thread per process: at once on
# config.changed (EVENT_HANDLERS: this service's event worker announces the version in a marker every
# process reads every CONFIG_MARKER_INTERVAL seconds), and after CONFIG_TTL seconds as a backstop.
CONFIG_CENTER_URL = config("CONFIG_CENTER_URL", default="http://127.0.0.1:8000")
CONFIG_PROFILE = config("CONFIG_PROFILE", default="default")
CONFIG_TTL = config("CONFIG_TTL", default=30.0, cast=float)
CONFIG_MARKER_INTERVAL = config("CONFIG_MARKER_INTERVAL", default=1.0, cast=float)
# The marker lives where all of this service's processes see it: the Redis cache when REDIS_URL is set, else
# (embedded mode, whose cache is per process) files in this folder.
CONFIG_MARKER_DIR = config(
    "CONFIG_MARKER_DIR",
    default="" if config("REDIS_URL", default="") else str(VAR_DIR / "config-marker" / SERVICE_NAME),
)

# /metrics answers only peers in these networks (the socket's address; headers are never believed).
METRICS_ALLOWED_NETWORKS = config("METRICS_ALLOWED_NETWORKS", default="127.0.0.0/8,::1/128", cast=Csv())
LOGGING = envs.logging_config(service=SERVICE_NAME, level=config("LOG_LEVEL", default="INFO"))
