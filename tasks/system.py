"""Tasks about the installation itself."""

from celery import shared_task
from celery.app.task import Task

from deployer import task_names
from deployer.health import container_engine_report, worker_selfcheck


@shared_task(bind=True, name=task_names.WORKER_SELFCHECK)
def worker_selfcheck_task(self: Task, nonce: str) -> None:
    worker_selfcheck(nonce=nonce, hostname=str(self.request.hostname))


@shared_task(name=task_names.CONTAINER_ENGINE_CHECK)
def container_engine_check_task() -> dict[str, object]:
    return container_engine_report()
