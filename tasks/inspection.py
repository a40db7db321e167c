"""Model inspection: the R work runs in a locked-down container (deployer/integrations/containers/sandbox.py)."""

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from deployer import task_names
from deployer.models import ModelVersion
from deployer.services.model_inspection import (
    inspection_containers_remove_leftovers,
    model_version_inspect,
    model_version_inspection_abandon,
)
from deployer.services.model_intake import model_versions_requeue_stuck


@shared_task(name=task_names.MODEL_VERSION_INSPECT)
def model_version_inspect_task(model_version_id: int) -> None:
    model_version = ModelVersion.objects.filter(pk=model_version_id).first()
    if model_version is None:  # deleted while queued
        return
    try:
        model_version_inspect(model_version=model_version)
    except SoftTimeLimitExceeded:
        # Image builds plus inspection outran the task's time limit: a verdict now,
        # rather than a version left inspecting (and re-queued by the reaper) forever.
        model_version_inspection_abandon(
            model_version=model_version,
            reason="inspection, including building its image with R packages, took longer than the task time limit "
            "(RDEPLOY_TASK_SOFT_TIME_LIMIT)",
        )
    except Exception:
        # Anything unforeseen (an upload built to break the parsers, say) gets a verdict too:
        # left `inspecting`, the version would be re-queued by the reaper for ever.
        logging.getLogger(__name__).exception("inspecting model version %s failed", model_version_id)
        model_version_inspection_abandon(
            model_version=model_version,
            reason="rdeploy could not finish inspecting this model (an internal error, logged for the "
            "administrator); upload it again, or ask an administrator",
        )
        raise


@shared_task(name=task_names.MODEL_VERSIONS_REQUEUE_STUCK)
def model_versions_requeue_stuck_task() -> None:
    model_versions_requeue_stuck()
    inspection_containers_remove_leftovers()
