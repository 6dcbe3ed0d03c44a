"""The gateway's WSGI application, as gunicorn loads it in each worker.

Two Django handlers behind one dispatch (``proxy/edge.py``): every forwarded ``/api/`` path goes to the
lean :class:`~proxy.edge.ProxyHandler` (the proxy view with only the middleware that acts on an API path,
and a manual server span), everything else to Django's full handler with ``settings.MIDDLEWARE``. The
proxied path is the product's cost per request; see bench/README.md for what the split saves.
"""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from common.tracing import configure_tracing, untrusted_trace_context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

# gunicorn imports this module in each worker, after the fork: every worker gets its own exporter thread.
# Before get_wsgi_application(): the Django instrumentation adds its middleware to the settings.
configure_tracing(settings.SERVICE_NAME, trust_incoming_context=False)
django_application = get_wsgi_application()  # sets Django up: the proxy modules need the app registry

from proxy.edge import ProxyHandler, edge_application  # noqa: E402  (imports models' apps, after setup)

application = untrusted_trace_context(edge_application(django_application, ProxyHandler()))
