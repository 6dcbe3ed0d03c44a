"""Settings of the gateway: the single public entry point. It verifies clients' access tokens, forwards
each request to the service that owns its path (see ``proxy/routes.py``) with a service assertion, and
serves its own admin and the config center (its database holds the admin's users and sessions and the
config versions).

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
# By default clients reach the gateway directly: no proxy in front of it is trusted, so X-Forwarded-* from
# a client are never believed (and are replaced before forwarding); see TRUSTED_PROXY_COUNT below.

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "drf_spectacular_sidecar",  # Swagger UI's assets for /api/docs/, served by the gateway itself
    "common",
    "proxy",
    "configcenter",
]

# The gateway's own pages (admin, docs, health, config center, /metrics) run through this list. Forwarded
# /api/ paths take a shorter one on the event loop (proxy/edge.py EDGE_LAYERS: these entries minus the
# admins' sign-in throttle, WhiteNoise, sessions, CSRF, auth and messages, which never act there, with the
# request id, access log and server span done by its application); change both together.
MIDDLEWARE = [
    "common.request_id.RequestIdMiddleware",
    "proxy.observability.AccessLogMiddleware",  # outermost after the request id: sees every answer
    "proxy.middleware.UnreadBodyMiddleware",  # a body the edge could not read whole (proxy/edge.py)
    "proxy.middleware.PathHygieneMiddleware",
    "proxy.admin_throttle.AdminSignInThrottleMiddleware",  # the login policy for every admin's sign-in form
    "corsheaders.middleware.CorsMiddleware",  # answers preflights itself; CORS_URLS_REGEX limits it to /api/
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

# Where each service listens; the route table in proxy/routes.py names these keys. Each value is one base
# URL or a comma-separated list of a service's instances (proxy/balancer.py balances across them).
UPSTREAMS = {
    "users": config("USER_SERVICE_URL", default="http://127.0.0.1:8001").rstrip("/"),
    "orders": config("ORDER_SERVICE_URL", default="http://127.0.0.1:8002").rstrip("/"),
    "payments": config("PAYMENT_SERVICE_URL", default="http://127.0.0.1:8003").rstrip("/"),
}
# Service discovery (common/common/discovery.py): static = the URLs above; dns = resolve their host names;
# etcd = the instances registered under ETCD_PREFIX, the URLs above while none is.
DISCOVERY_BACKEND = config("DISCOVERY_BACKEND", default="static")
ETCD_URL = config("ETCD_URL", default="http://127.0.0.1:2379")
ETCD_PREFIX = config("ETCD_PREFIX", default="/shop/services/")
DISCOVERY_DNS_SERVER = config("DISCOVERY_DNS_SERVER", default="")  # host:port for SRV lookups; empty: system
UPSTREAM_CONNECT_TIMEOUT = config("UPSTREAM_CONNECT_TIMEOUT", default=2.0, cast=float)  # seconds
UPSTREAM_READ_TIMEOUT = config("UPSTREAM_READ_TIMEOUT", default=15.0, cast=float)
# Pooled keep-alive connections per upstream for the gateway's own calls (health, docs, overview); more
# concurrent calls open extra, short-lived ones. Proxied requests keep one connection per worker thread.
UPSTREAM_POOL_SIZE = config("UPSTREAM_POOL_SIZE", default=32, cast=int)
# Forwarded requests a worker answers at once (each holds a connection to a service while it lasts); past
# it, 503 gateway_busy with Retry-After at once (proxy/views.py GatewayBusy). Below the open-files limit.
GATEWAY_MAX_IN_FLIGHT = config("GATEWAY_MAX_IN_FLIGHT", default=512, cast=int)
# Threads per worker for what Django answers (gateway/asgi.py): admin, docs, overview, config center (the
# health checks, metrics and static files have threads of their own).
GATEWAY_DJANGO_THREADS = config("GATEWAY_DJANGO_THREADS", default=8, cast=int)
MAX_REQUEST_BODY_BYTES = config("MAX_REQUEST_BODY_BYTES", default=1024 * 1024, cast=int)
# Seconds a request body has to arrive whole, however it trickles in; past it, 408 request_timeout.
GATEWAY_REQUEST_BODY_TIMEOUT = config("GATEWAY_REQUEST_BODY_TIMEOUT", default=30.0, cast=float)
# Seconds a client has to take the next part of an answer (nginx's send_timeout); past it, the connection closes.
GATEWAY_SEND_TIMEOUT = config("GATEWAY_SEND_TIMEOUT", default=60.0, cast=float)
# All request header lines together; a route may set less (proxy/routes.py). Over it: 431.
MAX_REQUEST_HEADER_BYTES = config("MAX_REQUEST_HEADER_BYTES", default=16 * 1024, cast=int)
HEALTH_CHECK_TIMEOUT = config("HEALTH_CHECK_TIMEOUT", default=3.0, cast=float)
# Resilience towards the services (proxy/balancer.py, proxy/breakers.py, proxy/upstream.py; README).
LOAD_BALANCER_POLICY = config("LOAD_BALANCER_POLICY", default="least_outstanding")
UPSTREAM_CHECK_INTERVAL = config("UPSTREAM_CHECK_INTERVAL", default=5.0, cast=float)  # 0: no active checks
UPSTREAM_CHECK_TIMEOUT = config("UPSTREAM_CHECK_TIMEOUT", default=1.0, cast=float)
UPSTREAM_EJECT_SECONDS = config("UPSTREAM_EJECT_SECONDS", default=10.0, cast=float)
UPSTREAM_DEADLINE = config("UPSTREAM_DEADLINE", default=20.0, cast=float)
RETRY_BUDGET_RATIO = config("RETRY_BUDGET_RATIO", default=0.2, cast=float)
RETRY_BUDGET_MIN = config("RETRY_BUDGET_MIN", default=3, cast=int)
RETRY_BUDGET_WINDOW = config("RETRY_BUDGET_WINDOW", default=10.0, cast=float)
BREAKER_FAILURES = config("BREAKER_FAILURES", default=5, cast=int)
BREAKER_RESET_TIMEOUT = config("BREAKER_RESET_TIMEOUT", default=10.0, cast=float)
BREAKER_HALF_OPEN_PROBES = config("BREAKER_HALF_OPEN_PROBES", default=1, cast=int)
BREAKER_SYNC_INTERVAL = config("BREAKER_SYNC_INTERVAL", default=1.0, cast=float)
# Breaker states are shared through Redis when REDIS_URL is set, else kept per worker process.
BREAKER_REDIS_URL = config("REDIS_URL", default="")
BREAKER_REDIS_PREFIX = config("BREAKER_REDIS_PREFIX", default="gateway:breaker")
STALE_MAX_AGE = config("STALE_MAX_AGE", default=600, cast=int)
STALE_MAX_BYTES = config("STALE_MAX_BYTES", default=256 * 1024, cast=int)
# New copies per service per STALE_MAX_AGE window, counted in the cache: a client inventing query strings
# (each a new target) must not fill the cache that also holds the rate limits and breaker states.
STALE_MAX_COPIES = config("STALE_MAX_COPIES", default=200, cast=int)

# Clients' access tokens: EdDSA JWTs issued by the user service, checked against its published keys.
JWKS_URL = config("JWKS_URL", default=f"{UPSTREAMS['users'].split(',')[0].strip()}/.well-known/jwks.json")
JWT_ISSUER = config("JWT_ISSUER", default="shop-users")
JWT_AUDIENCE = config("JWT_AUDIENCE", default="shop-api")
# How long fetched keys are trusted before the JWKS is read again: a key the user service stops publishing
# is refused at most this long after (while the JWKS is reachable; if it is not, the keys we have stay).
JWKS_CACHE_TTL = config("JWKS_CACHE_TTL", default=60.0, cast=float)  # seconds
# An unknown kid (a newly rotated key) refetches the JWKS at once, but at most once per this interval, so
# a flood of made-up kids costs one fetch. The user service's JWT_KEY_ACTIVATION_DELAY stays above it.
JWKS_MIN_REFRESH_INTERVAL = config("JWKS_MIN_REFRESH_INTERVAL", default=10.0, cast=float)  # seconds

# Rate limits (proxy/ratelimit.py; the policies are in proxy/routes.py). Rates in the `limits` notation:
# "600/minute", "10 per 5 minutes". Counted in Redis when REDIS_URL is set, else in a SQLite file under
# VAR_DIR shared by the gateway's worker processes.
RATE_LIMIT_DEFAULT = config("RATE_LIMIT_DEFAULT", default="600/minute")
RATE_LIMIT_LOGIN = config("RATE_LIMIT_LOGIN", default="10/minute")
RATE_LIMIT_REDIS_URL = config("REDIS_URL", default="")
RATE_LIMIT_KEY_PREFIX = config("RATE_LIMIT_KEY_PREFIX", default="gateway:ratelimit")
RATE_LIMIT_STORE_TIMEOUT = config("RATE_LIMIT_STORE_TIMEOUT", default=0.25, cast=float)  # seconds
RATE_LIMIT_STORE_RETRY_AFTER = config("RATE_LIMIT_STORE_RETRY_AFTER", default=5.0, cast=float)
RATE_LIMIT_SQLITE_PATH = VAR_DIR / "gateway-ratelimit.sqlite3"
# The client's address is the socket's, unless this many reverse proxies of ours stand in front of the
# gateway: then it is the right-most X-Forwarded-For hop they did not add (proxy/client_address.py).
TRUSTED_PROXY_COUNT = config("TRUSTED_PROXY_COUNT", default=0, cast=int)

# The gateway consumes no events yet; the Celery app exists so it can publish or consume later with the
# same configuration as the services.
EVENT_HANDLERS: dict[str, str] = {}

# Config center (configcenter/; README): runtime settings per service and profile, versioned in this
# database. This gateway reads its own (service "gateway") for CONFIG_PROFILE; each worker polls the
# version marker every CONFIG_POLL_INTERVAL seconds (0: off, settings only). Saving a version publishes
# config.changed through this outbox.
CONFIG_PROFILE = config("CONFIG_PROFILE", default="default")
CONFIG_POLL_INTERVAL = config("CONFIG_POLL_INTERVAL", default=1.0, cast=float)
OUTBOX_MODEL = "configcenter.OutboxEvent"
OUTBOX_MAX_LAG_SECONDS = config("OUTBOX_MAX_LAG_SECONDS", default=300.0, cast=float)  # readiness fails beyond
OUTBOX_CONFIRM_TIMEOUT = config("OUTBOX_CONFIRM_TIMEOUT", default=10.0, cast=float)  # the relay gives a publish up

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
CELERY_TASK_QUEUES: list[object] = []

# Protocol hygiene, CORS, metrics, docs (proxy/observability.py, proxy/docs.py; see the README).
# Browsers may call the API from these origins (scheme://host[:port], comma-separated); none by default.
CORS_ALLOWED_ORIGINS = config("CORS_ALLOWED_ORIGINS", default="", cast=Csv())
CORS_URLS_REGEX = r"^/api/(?!docs/|schema/)"
CORS_ALLOW_CREDENTIALS = False  # the API authenticates with a Bearer token, never with cookies
CORS_ALLOW_HEADERS = ("accept", "authorization", "content-type", "idempotency-key", "x-request-id")
CORS_EXPOSE_HEADERS = (
    *("x-request-id", "location", "retry-after", "ratelimit", "ratelimit-policy"),
    *("deprecation", "sunset", "link"),
)
CORS_PREFLIGHT_MAX_AGE = 600
# /metrics answers only peers in these networks (the socket's address; headers are never believed).
METRICS_ALLOWED_NETWORKS = config("METRICS_ALLOWED_NETWORKS", default="127.0.0.0/8,::1/128", cast=Csv())
DOCS_SCHEMA_TIMEOUT = config("DOCS_SCHEMA_TIMEOUT", default=3.0, cast=float)  # per service schema fetch
DOCS_SCHEMA_CACHE_SECONDS = config("DOCS_SCHEMA_CACHE_SECONDS", default=300, cast=int)
OVERVIEW_CALL_TIMEOUT = config("OVERVIEW_CALL_TIMEOUT", default=2.0, cast=float)  # each call of /me/overview

LOGGING = envs.logging_config(service=SERVICE_NAME, level=config("LOG_LEVEL", default="INFO"))
# The access log (proxy/observability.py): the same JSON lines as every other log, at INFO whatever LOG_LEVEL.
LOGGING["loggers"]["gateway.access"] = {"handlers": ["console"], "level": "INFO", "propagate": False}
