"""The URLs every service has besides its API, each under the service's own prefix so the gateway can
route them unchanged: health (readiness, liveness), metrics, admin, and the OpenAPI schema with its Swagger UI."""

from django.contrib import admin
from django.urls import URLPattern, URLResolver, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from common.admin_site import name_admin_site
from common.health import LIVE_CHECKS, READY_CHECKS, ServiceHealthView
from common.metrics import metrics_view

# The docs describe the API to anyone; they need no assertion.
_PUBLIC = {"authentication_classes": [], "permission_classes": [AllowAny]}


def service_urls(service: str) -> list[URLPattern | URLResolver]:
    name_admin_site(f"{service} service")
    return [
        path("health/", ServiceHealthView.as_view(checks=READY_CHECKS), name="health"),
        path("health/live/", ServiceHealthView.as_view(checks=LIVE_CHECKS), name="health-live"),
        path("health/ready/", ServiceHealthView.as_view(checks=READY_CHECKS), name="health-ready"),
        # Internal networks only, else 404; the gateway never forwards /metrics (its route table has no such prefix).
        path("metrics", metrics_view, name="metrics"),
        path(f"admin/{service}/", admin.site.urls),
        path(f"api/schema/{service}/", SpectacularAPIView.as_view(**_PUBLIC), name="schema"),
        path(f"api/docs/{service}/", SpectacularSwaggerView.as_view(url_name="schema", **_PUBLIC), name="docs"),
    ]
