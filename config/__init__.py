"""The rdeploy Django project: settings, URLs and WSGI entry point."""

# Load the Celery app with Django so `deployer.jobs.enqueue` sends to the configured broker.
from tasks import app as celery_app

__all__ = ["celery_app"]
