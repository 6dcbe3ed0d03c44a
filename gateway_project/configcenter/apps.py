from django.apps import AppConfig


class ConfigCenterConfig(AppConfig):
    name = "configcenter"
    verbose_name = "Config center"
