"""The gateway's ASGI application, as gunicorn's ASGI worker loads it in each worker
(``gunicorn gateway.asgi:application --worker-class asgi``, see manage_all.py).

Every forwarded ``/api/`` path is answered on the worker's event loop by :class:`proxy.edge.ProxyApp`;
everything else by Django's full WSGI handler on a pool of ``GATEWAY_DJANGO_THREADS`` threads (a2wsgi), as
under a WSGI server, the health checks and metrics, and the static files, each on threads of their own.
proxy/edge.py says why; bench/README.md what it saves.
"""

import os

from a2wsgi import WSGIMiddleware
from django.conf import settings
from django.core.wsgi import get_wsgi_application

from common.tracing import configure_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

# gunicorn imports this module in each worker, after the fork: every worker gets its own exporter thread.
# Before get_wsgi_application(): the Django instrumentation adds its middleware to the settings.
configure_tracing(settings.SERVICE_NAME, trust_incoming_context=False)
django_application = get_wsgi_application()  # sets Django up: the proxy modules need the app registry

from configcenter import runtime as runtime_config  # noqa: E402  (imports models' apps, after setup)
from proxy.edge import ProxyApp, django_side, edge_application, is_operations, is_static  # noqa: E402

# Before the worker's event loop serves: the first load of the runtime configuration reads the database.
runtime_config.start()

# Bulkheads (proxy.edge.edge_application says why): the health checks and metrics, and the static files,
# each on threads of their own. The checks are quick (the full /health document is computed at most once a
# second per worker); a static file may be large, and read slowly.
OPERATIONS_THREADS = 2
STATIC_THREADS = 4


def django_on(threads: int) -> WSGIMiddleware:
    return WSGIMiddleware(django_side(django_application), workers=threads)


application = edge_application(
    django_on(settings.GATEWAY_DJANGO_THREADS),
    ProxyApp(),
    bulkheads=((is_operations, django_on(OPERATIONS_THREADS)), (is_static, django_on(STATIC_THREADS))),
)
