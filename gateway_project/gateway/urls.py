import re

from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from common.admin_site import name_admin_site
from proxy.docs import docs_view, schema_view
from proxy.observability import metrics_view
from proxy.overview import overview_view
from proxy.routes import FORWARDED_PREFIXES
from proxy.views import health_view, live_view, proxy_view, ready_view

name_admin_site("gateway")

# The gateway's own API paths first, since every other /api/ path is forwarded; then the forwarded paths:
# /admin/users/ belongs to the user service, not to the gateway's admin at /admin/.
urlpatterns = [
    path("api/v1/me/overview", overview_view, name="me-overview"),
    path("api/schema/", schema_view, name="schema"),
    path("api/docs/", docs_view, name="docs"),
    # The services' own docs describe internal paths and the internal assertion: the public page replaces them.
    re_path(r"^api/docs/(?:users|orders|payments)/$", RedirectView.as_view(url="/api/docs/", permanent=False)),
    *(re_path(f"^{re.escape(prefix.lstrip('/'))}", proxy_view) for prefix in FORWARDED_PREFIXES),
    path("config/", include("configcenter.urls")),  # config center: service assertion or staff only
    path("metrics", metrics_view, name="metrics"),  # internal networks only, else 404
    path("health", health_view, name="health"),
    path("health/", health_view),
    path("health/live/", live_view, name="health-live"),  # this process answers
    path("health/ready/", ready_view, name="health-ready"),  # this gateway's own dependencies
    # The same API under /admin/, where the admin's session and CSRF cookies are sent: staff edit there.
    path("admin/config/", include("configcenter.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "common.errors.handler400"
handler403 = "common.errors.handler403"
handler404 = "common.errors.handler404"
handler500 = "common.errors.handler500"
