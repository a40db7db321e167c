"""Tasks about the installation itself."""

import logging

from celery import shared_task
from celery.app.task import Task

from deployer import task_names
from deployer.health import container_engine_report, worker_selfcheck
from deployer.services.cloud_gc import cloud_orphans, gc_report


@shared_task(bind=True, name=task_names.WORKER_SELFCHECK)
def worker_selfcheck_task(self: Task, nonce: str) -> None:
    worker_selfcheck(nonce=nonce, hostname=str(self.request.hostname))


@shared_task(name=task_names.CONTAINER_ENGINE_CHECK)
def container_engine_check_task() -> dict[str, object]:
    return container_engine_report()


@shared_task(name=task_names.GC_REPORT)
def gc_report_task() -> str:
    """Beat's daily `rdeploy_gc`, report only (deleting stays a person's decision)."""
    report = "\n".join(gc_report(cloud_orphans()))
    logging.getLogger(__name__).info("rdeploy_gc report:\n%s", report)
    return report
