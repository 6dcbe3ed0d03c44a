"""Settings of the gateway: the single public entry point. It verifies clients' access tokens, forwards
each request to the service that owns its path (see ``proxy/routes.py``) with a service assertion, and
serves its own admin (its database only holds the admin's users and sessions).

Every value is read from the environment with a working development default; the README lists them all.
"""

from pathlib import Path

from decouple import Csv, config

from common import settings as envs

BASE_DIR = Path(__file__).resolve().parent.parent
SERVICE_NAME = "gateway"
VAR_DIR = envs.var_dir(BASE_DIR)

SECRET_KEY = envs.secret("SECRET_KEY", var=VAR_DIR, scope=SERVICE_NAME)
INTERNAL_AUTH_SECRET = envs.secret("INTERNAL_AUTH_SECRET", var=VAR_DIR)
DEBUG = config("DEBUG", default=False, cast=bool)
ALLOWED_HOSTS = config("ALLOWED_HOSTS", default="127.0.0.1,localhost,[::1]", cast=Csv())
CSRF_TRUSTED_ORIGINS = config("CSRF_TRUSTED_ORIGINS", default="", cast=Csv())
# Clients reach the gateway directly: no proxy in front of it is trusted, so X-Forwarded-* from a client
# are never believed (and are replaced before forwarding).

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "common",
    "proxy",
]

# Every proxied request runs through this list, so it holds only what the admin needs; the proxy view
# is csrf_exempt and never touches the session or the user, which therefore cost nothing on that path.
MIDDLEWARE = [
    "common.request_id.RequestIdMiddleware",
    "proxy.middleware.PathHygieneMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "gateway.urls"
WSGI_APPLICATION = "gateway.wsgi.application"

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

# The gateway's own admin and static files; /admin/<service>/ and /static/<service>/ are forwarded. The
# cookies' path keeps them away from the API paths (the proxy also strips them before forwarding).
STATIC_URL = f"/static/{SERVICE_NAME}/"
# WhiteNoise serves the apps' static files straight from their folders; a deployment that prefers
# collected, compressed files sets STATIC_ROOT and runs collectstatic.
STATIC_ROOT = config("STATIC_ROOT", default=None)
WHITENOISE_USE_FINDERS = True
SESSION_COOKIE_NAME = f"{SERVICE_NAME}_sessionid"
SESSION_COOKIE_PATH = "/admin/"
CSRF_COOKIE_NAME = f"{SERVICE_NAME}_csrftoken"
CSRF_COOKIE_PATH = SESSION_COOKIE_PATH
SESSION_COOKIE_HTTPONLY = True
# Browsers reach the admin through the gateway, over HTTPS in production: cookies only travel encrypted.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = config("SECURE_COOKIES", default=envs.is_production(), cast=bool)
APPEND_SLASH = False
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# Where each service listens; the route table in proxy/routes.py names these keys.
UPSTREAMS = {
    "users": config("USER_SERVICE_URL", default="http://127.0.0.1:8001").rstrip("/"),
    "orders": config("ORDER_SERVICE_URL", default="http://127.0.0.1:8002").rstrip("/"),
    "payments": config("PAYMENT_SERVICE_URL", default="http://127.0.0.1:8003").rstrip("/"),
}
UPSTREAM_CONNECT_TIMEOUT = config("UPSTREAM_CONNECT_TIMEOUT", default=2.0, cast=float)  # seconds
UPSTREAM_READ_TIMEOUT = config("UPSTREAM_READ_TIMEOUT", default=15.0, cast=float)
# Pooled keep-alive connections per upstream; more concurrent calls open extra, short-lived ones.
UPSTREAM_POOL_SIZE = config("UPSTREAM_POOL_SIZE", default=32, cast=int)
MAX_REQUEST_BODY_BYTES = config("MAX_REQUEST_BODY_BYTES", default=1024 * 1024, cast=int)
HEALTH_CHECK_TIMEOUT = config("HEALTH_CHECK_TIMEOUT", default=3.0, cast=float)

# Clients' access tokens: EdDSA JWTs issued by the user service, checked against its published keys.
JWKS_URL = config("JWKS_URL", default=f"{UPSTREAMS['users']}/.well-known/jwks.json")
JWT_ISSUER = config("JWT_ISSUER", default="shop-users")
JWT_AUDIENCE = config("JWT_AUDIENCE", default="shop-api")

# The gateway consumes no events yet; the Celery app exists so it can publish or consume later with the
# same configuration as the services.
EVENT_HANDLERS: dict[str, str] = {}

CELERY_BROKER_URL = envs.broker_url()
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
CELERY_TASK_QUEUES: list[object] = []

LOGGING = envs.logging_config(service=SERVICE_NAME, level=config("LOG_LEVEL", default="INFO"))
