# Load the Celery app with Django so that publishing an event uses this service's broker settings.
from .celery import app as celery_app

__all__ = ("celery_app",)
