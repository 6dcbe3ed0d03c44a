"""A trivial DRF JSON service: the upstream bench/run.py puts behind each gateway. No database, no
authentication, one middleware: whatever it costs is the same for the direct path and every proxy, so the
ratios measure the proxies. It also publishes the bench's token key at /.well-known/jwks.json, standing in
for the user service, so the gateway verifies real EdDSA tokens."""

import os

SECRET_KEY = os.environ.get("BENCH_UPSTREAM_SECRET_KEY", "bench-upstream-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["rest_framework"]
# CommonMiddleware as in every real service: it sets Content-Length, so responses are not chunked.
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "bench_upstream.urls"
WSGI_APPLICATION = "bench_upstream.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
}
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "WARNING"}}
