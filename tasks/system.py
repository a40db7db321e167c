"""Tasks about the installation itself."""

from celery import shared_task
from celery.app.task import Task

from deployer.health import worker_selfcheck


@shared_task(bind=True, name="rdeploy.worker_selfcheck")
def worker_selfcheck_task(self: Task, nonce: str) -> None:
    worker_selfcheck(nonce=nonce, hostname=str(self.request.hostname))
