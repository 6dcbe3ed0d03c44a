from django.urls import path

from configcenter.views import config_view

urlpatterns = [
    path("<str:service>/<str:profile>/", config_view),
]
