from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from health_check.views import HealthCheckView
from rest_framework.permissions import AllowAny

from common.health import SERVICE_CHECKS
from users.views import JwksApi

docs_access = {"authentication_classes": [], "permission_classes": [AllowAny]}

urlpatterns = [
    path("api/v1/", include("users.urls")),
    path(".well-known/jwks.json", JwksApi.as_view(), name="jwks"),
    path("health/", HealthCheckView.as_view(checks=SERVICE_CHECKS), name="health"),
    path("admin/users/", admin.site.urls),
    path("api/schema/users/", SpectacularAPIView.as_view(**docs_access), name="schema"),
    path("api/docs/users/", SpectacularSwaggerView.as_view(url_name="schema", **docs_access), name="docs"),
]

handler400 = "common.errors.handler400"
handler403 = "common.errors.handler403"
handler404 = "common.errors.handler404"
handler500 = "common.errors.handler500"
