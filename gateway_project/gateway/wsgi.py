"""Django's WSGI handler for the gateway, for ``manage.py runserver`` and WSGI servers. The gateway runs
under gunicorn's ASGI worker (``gateway/asgi.py``), which answers the forwarded ``/api/`` paths on its
event loop; under a WSGI server Django's full handler answers every path, through the same proxy view on
its threads."""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from common.tracing import configure_tracing, untrusted_trace_context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

configure_tracing(settings.SERVICE_NAME, trust_incoming_context=False)
application = untrusted_trace_context(get_wsgi_application())
