"""Shadow rollout: a new version answers copies of live requests before it takes over.

``shadow_start`` records a ``Shadow`` and a ``shadow`` deployment that starts the version
beside the live one; when it succeeds the target routes copies to it (the gateway sends
them for the local target, SageMaker's shadow variants for SageMaker) and the pairs of
answers are stored (``ShadowPair``). ``shadow_promote`` makes it live through the usual
switch (a ``promote`` deployment: nothing is built or started again), ``shadow_end``
removes it (an ``end_shadow`` deployment), and the reconciler ends shadows whose duration
is over (``shadows_end_expired``). Callers only ever get the live version's answers.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from deployer.durations import duration_parse
from deployer.errors import DomainError
from deployer.models import Deployment, Endpoint, ModelVersion, Shadow
from deployer.services import gateway
from deployer.services.endpoints import EndpointConflict, endpoint_locked, model_version_check
from deployer.services.pipeline import deployment_start
from deployer.targets import get_target

logger = logging.getLogger(__name__)

MIN_DURATION = timedelta(minutes=5)


class ShadowInvalid(DomainError):
    kind = "invalid"


def shadow_duration_parse(value: object) -> timedelta:
    """ "2h" and the like, from 5 minutes to ``SHADOW_MAX_DURATION_HOURS``."""
    maximum = timedelta(hours=settings.SHADOW_MAX_DURATION_HOURS)
    try:
        return duration_parse(value, name="duration", minimum=MIN_DURATION, maximum=maximum)
    except ValueError as exc:
        raise ShadowInvalid(str(exc), field="duration") from None


def shadow_start(*, endpoint: Endpoint, model_version: ModelVersion, sample_percent: int, duration: str) -> Shadow:
    """Start ``model_version`` as the endpoint's shadow, receiving ``sample_percent`` % of
    its live requests for ``duration``; the live version is not touched."""
    if isinstance(sample_percent, bool) or not isinstance(sample_percent, int) or not 1 <= sample_percent <= 100:
        raise ShadowInvalid("'sample_percent' must be a whole number from 1 to 100.", field="sample_percent")
    period = shadow_duration_parse(duration)
    model_version_check(model_version, endpoint.owner)
    with transaction.atomic():
        locked = endpoint_locked(endpoint)
        if locked.status != Endpoint.Status.LIVE or locked.model_version is None:
            raise EndpointConflict(f"Endpoint {locked.name} is {locked.status}; a shadow needs a live endpoint.")
        if Shadow.objects.filter(endpoint=locked, status__in=Shadow.ACTIVE).exists():
            raise EndpointConflict(f"Endpoint {locked.name} already has a shadow; promote it or stop it first.")
        if locked.model_version_id == model_version.pk:
            raise ShadowInvalid(f"{model_version} already serves {locked.name}; choose another version.", field="model")
        deployment = deployment_start(endpoint=locked, model_version=model_version, kind=Deployment.Kind.SHADOW)
        shadow = Shadow.objects.create(
            endpoint=locked,
            model_version=model_version,
            deployment=deployment,
            sample_percent=sample_percent,
            duration=period,
        )
    return shadow


def _running_shadow(endpoint: Endpoint) -> Shadow:
    shadow = Shadow.objects.filter(endpoint=endpoint, status__in=Shadow.ACTIVE).first()
    if shadow is None:
        raise EndpointConflict(f"Endpoint {endpoint.name} has no shadow.")
    if shadow.status != Shadow.Status.RUNNING:
        raise EndpointConflict(f"The shadow of {endpoint.name} is {shadow.status}; wait for it to finish.")
    return shadow


def shadow_promote(*, endpoint: Endpoint) -> Deployment:
    """Make the running shadow live through the blue/green switch, without a build or start."""
    with transaction.atomic():
        locked = endpoint_locked(endpoint)
        shadow = _running_shadow(locked)
        deployment = deployment_start(endpoint=locked, model_version=shadow.model_version, kind=Deployment.Kind.PROMOTE)
        Shadow.objects.filter(pk=shadow.pk).update(status=Shadow.Status.PROMOTING)
    gateway.route_forget(endpoint.name)
    return deployment


def shadow_end(*, endpoint: Endpoint, outcome: str = "Stopped by its owner.") -> Deployment:
    """Stop the copies and remove the shadow; the live version is not touched."""
    with transaction.atomic():
        locked = endpoint_locked(endpoint)
        shadow = _running_shadow(locked)
        deployment = deployment_start(
            endpoint=locked, model_version=shadow.model_version, kind=Deployment.Kind.END_SHADOW
        )
        Shadow.objects.filter(pk=shadow.pk).update(status=Shadow.Status.ENDING, outcome=outcome)
    gateway.route_forget(endpoint.name)
    return deployment


def shadows_end_expired(*, now: datetime | None = None) -> int:
    """Reconciler: end every running shadow whose duration is over; returns how many."""
    now = now or timezone.now()
    ended = 0
    for shadow in Shadow.objects.filter(status=Shadow.Status.RUNNING, ends_at__lte=now).select_related("endpoint"):
        try:
            shadow_end(endpoint=shadow.endpoint, outcome=f"Ended: its duration ({shadow.duration}) is over.")
            ended += 1
        except EndpointConflict:
            pass  # a deployment of the endpoint runs: the next reconciler run ends it
    return ended


def shadows_collect_pairs() -> int:
    """Reconciler: the pairs of running shadows whose target copies requests itself."""
    stored = 0
    for shadow in Shadow.objects.filter(status=Shadow.Status.RUNNING).select_related("endpoint"):
        try:
            stored += get_target(shadow.endpoint.target).collect_shadow_pairs(shadow)
        except Exception:
            logger.exception("collecting the pairs of shadow %s failed", shadow.pk)
    return stored
