"""Thin adapters over deployer.services.upload_cleanup."""

from celery import shared_task

from deployer import task_names
from deployer.services.upload_cleanup import upload_temp_files_remove_stale


@shared_task(name=task_names.UPLOAD_TEMP_FILES_REMOVE_STALE)
def upload_temp_files_remove_stale_task() -> list[str]:
    return upload_temp_files_remove_stale()
