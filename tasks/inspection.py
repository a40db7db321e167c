"""Model inspection: the R work runs in a sandboxed subprocess (deployer/integrations/rprocess.py)."""

from celery import shared_task

from deployer.models import ModelVersion
from deployer.services.model_versions import model_version_inspect, model_versions_requeue_stuck


@shared_task(name="rdeploy.model_version_inspect")
def model_version_inspect_task(model_version_id: int) -> None:
    model_version = ModelVersion.objects.filter(pk=model_version_id).first()
    if model_version is None:  # deleted while queued
        return
    model_version_inspect(model_version=model_version)


@shared_task(name="rdeploy.model_versions_requeue_stuck")
def model_versions_requeue_stuck_task() -> None:
    model_versions_requeue_stuck()
