"""The periodic reconciler (Celery beat): resume deployments nobody advances, supervise
live endpoints, reap what runs for resources already removed, end shadows whose time is up."""

from __future__ import annotations

import logging

from django.db.models import Q
from django.utils import timezone

from deployer import task_names
from deployer.jobs import enqueue
from deployer.models import Deployment, Endpoint, ExternalResource, LogLine
from deployer.services.endpoint_logs import endpoint_logs_collect
from deployer.services.pipeline import FINISHED_STEP, OVERDUE
from deployer.targets import get_target
from deployer.targets.base import PermanentStepError

logger = logging.getLogger(__name__)


def pipeline_reconcile() -> dict[str, int]:
    """Periodic repair: resume deployments nobody advances, supervise live endpoints, reap
    what runs for resources already removed."""
    now = timezone.now()
    resumed = 0
    stale = Deployment.objects.filter(status__in=Deployment.ACTIVE).filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    )
    for deployment in stale:
        step = deployment.steps.exclude(status__in=FINISHED_STEP).order_by("position").first()
        if step is not None and step.next_check_at is not None and step.next_check_at > now - OVERDUE:
            continue  # its poll is scheduled and not overdue
        if deployment.status == Deployment.Status.PENDING and deployment.created_at > now - OVERDUE:
            continue  # its first task is on its way
        enqueue(task_names.DEPLOYMENT_ADVANCE, deployment.pk)
        resumed += 1
    checked = failed = 0
    for endpoint in Endpoint.objects.filter(status__in=Endpoint.SERVING):
        target = get_target(endpoint.target)
        try:
            endpoint_logs_collect(endpoint=endpoint)
            target.check(endpoint)
            checked += 1
        except PermanentStepError as exc:
            # Only a still serving endpoint fails: a stop or delete may have begun meanwhile.
            Endpoint.objects.filter(pk=endpoint.pk, status__in=Endpoint.SERVING).update(
                status=Endpoint.Status.FAILED, error=exc.message, updated_at=timezone.now()
            )
            LogLine.objects.create(
                endpoint=endpoint, source=LogLine.Source.ENDPOINT, level=LogLine.Level.ERROR, message=exc.message
            )
            failed += 1
        except Exception:
            logger.exception("reconciling endpoint %s failed", endpoint.name)
    reaped = 0
    for target_name in ExternalResource.objects.values_list("target", flat=True).distinct():
        try:
            reaped += get_target(target_name).reap()
        except Exception:
            logger.exception("reaping orphans of target %s failed", target_name)
    return {"resumed": resumed, "checked": checked, "failed": failed, "reaped": reaped}
