from django.urls import include, path

from common.urls import service_urls
from users.views import JwksApi

urlpatterns = [
    path("api/v1/", include("users.urls")),
    path(".well-known/jwks.json", JwksApi.as_view(), name="jwks"),
    *service_urls("users"),
]

handler400 = "common.errors.handler400"
handler403 = "common.errors.handler403"
handler404 = "common.errors.handler404"
handler500 = "common.errors.handler500"
