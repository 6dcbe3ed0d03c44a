from django.urls import include, path

from common.urls import service_urls

urlpatterns = [
    path("api/v1/", include("catalog.urls")),
    path("api/v1/", include("orders.urls")),
    path("api/v2/", include("catalog.urls_v2")),
    *service_urls("orders"),
]

handler400 = "common.errors.handler400"
handler403 = "common.errors.handler403"
handler404 = "common.errors.handler404"
handler500 = "common.errors.handler500"
