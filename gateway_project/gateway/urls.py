import re

from django.contrib import admin
from django.urls import path, re_path

from common.admin_site import name_admin_site
from proxy.routes import FORWARDED_PREFIXES
from proxy.views import health_view, proxy_view

name_admin_site("gateway")

# Forwarded paths first: /admin/users/ belongs to the user service, not to the gateway's admin at /admin/.
urlpatterns = [
    *(re_path(f"^{re.escape(prefix.lstrip('/'))}", proxy_view) for prefix in FORWARDED_PREFIXES),
    path("health", health_view, name="health"),
    path("health/", health_view),
    path("admin/", admin.site.urls),
]

handler400 = "common.errors.handler400"
handler403 = "common.errors.handler403"
handler404 = "common.errors.handler404"
handler500 = "common.errors.handler500"
