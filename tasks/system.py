"""Tasks about the installation itself."""

from celery import shared_task
from celery.app.task import Task

from deployer.health import container_engine_report, worker_selfcheck


@shared_task(bind=True, name="rdeploy.worker_selfcheck")
def worker_selfcheck_task(self: Task, nonce: str) -> None:
    worker_selfcheck(nonce=nonce, hostname=str(self.request.hostname))


@shared_task(name="rdeploy.container_engine_check")
def container_engine_check_task() -> dict[str, object]:
    return container_engine_report()
