"""Thin adapters over deployer.services.pipeline."""

from celery import shared_task

from deployer import task_names
from deployer.services.endpoints import (
    endpoint_push_api_key,
    endpoint_wake,
    endpoints_stop_idle,
    endpoints_wake_called,
)
from deployer.services.pipeline import deployment_advance
from deployer.services.reconciler import pipeline_reconcile
from deployer.services.shadows import shadows_collect_pairs, shadows_end_expired


@shared_task(name=task_names.DEPLOYMENT_ADVANCE)
def deployment_advance_task(deployment_id: int) -> None:
    deployment_advance(deployment_id=deployment_id)


@shared_task(name=task_names.PIPELINE_RECONCILE)
def pipeline_reconcile_task() -> dict[str, int]:
    # After the reconciler has collected the live endpoints' logs, whose access lines say
    # when each was last called.
    return {
        **pipeline_reconcile(),
        "stopped_idle": endpoints_stop_idle(),
        # Calls to a stopped endpoint's own public API (SageMaker's API Gateway URL).
        "woken": endpoints_wake_called(),
        "shadows_ended": shadows_end_expired(),
        "shadow_pairs": shadows_collect_pairs(),
    }


# Idempotent (it sets the hash the database holds now), so any failure is worth a retry;
# the reconciler also re-syncs live endpoints.
@shared_task(name=task_names.ENDPOINT_PUSH_API_KEY, autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def endpoint_push_api_key_task(endpoint_id: int) -> None:
    endpoint_push_api_key(endpoint_id=endpoint_id)


# Idempotent: a second wake finds the endpoint starting and does nothing.
@shared_task(name=task_names.ENDPOINT_WAKE)
def endpoint_wake_task(endpoint_id: int) -> None:
    endpoint_wake(endpoint_id=endpoint_id)
