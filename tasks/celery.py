"""Celery application. Settings live in config/settings.py under the CELERY_ namespace."""

import os
import pkgutil
from pathlib import Path

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("rdeploy")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Every module of this package holds tasks (autodiscovery would look for `tasks.py` in apps).
app.conf.include = [
    f"tasks.{module.name}"
    for module in pkgutil.iter_modules([str(Path(__file__).parent)])
    if module.name not in {"celery", "tests"}
]


@worker_ready.connect
def _report_on_the_container_engine(**_: object) -> None:
    # /readyz knows at once whether this worker can run model code, not 30 s later.
    from deployer.health import container_engine_report

    container_engine_report()
