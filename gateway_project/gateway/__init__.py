# Load the Celery app with Django so that the gateway's broker settings apply wherever Celery is used.
from .celery import app as celery_app

__all__ = ("celery_app",)
