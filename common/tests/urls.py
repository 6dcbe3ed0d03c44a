from django.urls import path

from common.health import LIVE_CHECKS, READY_CHECKS, ServiceHealthView
from common.metrics import metrics_view
from tests import views

urlpatterns = [
    path("api/me/", views.MeApi.as_view()),
    path("api/public/", views.PublicApi.as_view()),
    path("api/internal/", views.InternalApi.as_view()),
    path("api/items/", views.ItemsApi.as_view()),
    path("api/fail/<slug:kind>/", views.FailingApi.as_view()),
    path("request-id/", views.request_id_view),
    path("crash/", views.crash_view),
    path("things/<int:pk>/", lambda request, pk: views.request_id_view(request), name="thing-detail"),
    # As common.urls.service_urls wires them in every service.
    path("health/live/", ServiceHealthView.as_view(checks=LIVE_CHECKS)),
    path("health/ready/", ServiceHealthView.as_view(checks=READY_CHECKS)),
    path("metrics", metrics_view),
]

handler400 = "common.errors.handler400"
handler403 = "common.errors.handler403"
handler404 = "common.errors.handler404"
handler500 = "common.errors.handler500"
