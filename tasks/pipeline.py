"""Thin adapters over deployer.services.pipeline."""

from celery import shared_task

from deployer.services.pipeline import deployment_advance, pipeline_reconcile


@shared_task(name="rdeploy.deployment_advance")
def deployment_advance_task(deployment_id: int) -> None:
    deployment_advance(deployment_id=deployment_id)


@shared_task(name="rdeploy.pipeline_reconcile")
def pipeline_reconcile_task() -> dict[str, int]:
    return pipeline_reconcile()
