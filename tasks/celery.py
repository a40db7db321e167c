"""Celery application. Settings live in config/settings.py under the CELERY_ namespace."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("rdeploy")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Task modules are listed explicitly: autodiscovery would look for `tasks.py` in apps.
app.conf.include = ["tasks.system"]
