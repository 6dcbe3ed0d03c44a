import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from common.tracing import configure_tracing, untrusted_trace_context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

# gunicorn imports this module in each worker, after the fork: every worker gets its own exporter thread.
# Before get_wsgi_application(): the Django instrumentation adds its middleware to the settings.
configure_tracing(settings.SERVICE_NAME, trust_incoming_context=False)
application = untrusted_trace_context(get_wsgi_application())
