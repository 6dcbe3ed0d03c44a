from django.apps import AppConfig


class EventStoreConfig(AppConfig):
    name = "tests.eventstore"
    label = "eventstore"
