import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from common.tracing import configure_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "order_service.settings")

# gunicorn imports this module in each worker, after the fork: every worker gets its own exporter thread.
# Before get_wsgi_application(): the Django instrumentation adds its middleware to the settings.
configure_tracing(settings.SERVICE_NAME)
application = get_wsgi_application()
