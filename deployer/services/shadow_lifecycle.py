"""What a finished shadow deployment means for its ``Shadow`` row (the pipeline calls this).

Kept apart from ``deployer.services.shadows`` (which starts deployments through the
pipeline) so the pipeline can call it without an import cycle.
"""

from __future__ import annotations

from datetime import datetime

from deployer.models import Deployment, Endpoint, Shadow


def shadow_deployment_finished(deployment: Deployment, *, now: datetime, error: str = "") -> None:
    """Move the endpoint's shadow on after ``deployment`` succeeded (``error`` empty) or
    failed; call inside the transaction that finishes the deployment. A no-op for kinds
    that do not concern a shadow, and when the row already moved on (a rerun)."""
    kind = deployment.kind
    if kind == Deployment.Kind.SHADOW:
        shadow = Shadow.objects.filter(deployment=deployment, status=Shadow.Status.STARTING).first()
        if shadow is None:
            return
        if error:
            _finish(shadow, status=Shadow.Status.FAILED, now=now, outcome=f"Starting the shadow failed: {error}")
        else:
            Shadow.objects.filter(pk=shadow.pk).update(
                status=Shadow.Status.RUNNING, started_at=now, ends_at=now + shadow.duration
            )
        return
    active = Shadow.objects.filter(endpoint_id=deployment.endpoint_id, status__in=Shadow.ACTIVE).first()
    if active is None:
        return
    if kind == Deployment.Kind.PROMOTE:
        status = Shadow.Status.FAILED if error else Shadow.Status.PROMOTED
        outcome = f"Promoting failed: {error}" if error else active.outcome or "Promoted: it serves the endpoint now."
    elif kind == Deployment.Kind.END_SHADOW:
        status = Shadow.Status.FAILED if error else Shadow.Status.ENDED
        outcome = f"Ending the shadow failed: {error}" if error else active.outcome or "Ended."
    elif kind == Deployment.Kind.DELETE and not error:
        status, outcome = Shadow.Status.ENDED, "Ended: the endpoint was deleted."
    else:
        return
    _finish(active, status=status, now=now, outcome=outcome)


def _finish(shadow: Shadow, *, status: str, now: datetime, outcome: str) -> None:
    Shadow.objects.filter(pk=shadow.pk).update(status=status, finished_at=now, outcome=outcome)
    # Copies stop at once in every web process that re-reads the route.
    Endpoint.objects.filter(pk=shadow.endpoint_id, shadow_runtime__shadow_id=shadow.pk).update(shadow_runtime={})
