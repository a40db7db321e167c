"""The Celery app (`celery -A tasks worker`) and thin task adapters over deployer services."""

from tasks.celery import app

__all__ = ["app"]
