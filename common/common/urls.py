"""The URLs every service has besides its API, each under the service's own prefix so the gateway can
route them unchanged: health, admin, and the OpenAPI schema with its Swagger UI."""

from django.contrib import admin
from django.urls import URLPattern, URLResolver, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from common.admin_site import name_admin_site
from common.health import SERVICE_CHECKS, ServiceHealthView

# The docs describe the API to anyone; they need no assertion.
_PUBLIC = {"authentication_classes": [], "permission_classes": [AllowAny]}


def service_urls(service: str) -> list[URLPattern | URLResolver]:
    name_admin_site(f"{service} service")
    return [
        path("health/", ServiceHealthView.as_view(checks=SERVICE_CHECKS), name="health"),
        path(f"admin/{service}/", admin.site.urls),
        path(f"api/schema/{service}/", SpectacularAPIView.as_view(**_PUBLIC), name="schema"),
        path(f"api/docs/{service}/", SpectacularSwaggerView.as_view(url_name="schema", **_PUBLIC), name="docs"),
    ]
