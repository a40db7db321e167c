"""Endpoints: create, update (blue/green), roll back, delete, rotate the public key, invoke.

Every write here records a ``Deployment`` and leaves the work to the pipeline
(``deployer.services.pipeline``); these functions return at once.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from deployer import task_names
from deployer.durations import idle_stop_after_parse
from deployer.errors import DomainError
from deployer.integrations.aws import cloudwatch
from deployer.integrations.aws.client import AwsConfigurationError, AwsError
from deployer.jobs import enqueue
from deployer.models import Deployment, Endpoint, LogLine, ModelVersion, Shadow, name_validator
from deployer.services import gateway
from deployer.services.pipeline import deployment_start
from deployer.services.quotas import quota_check
from deployer.services.tokens import hash_secret
from deployer.targets import get_target
from deployer.targets.base import InvocationResult, TargetOptionsError
from deployer.targets.sagemaker.names import endpoint_name

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

logger = logging.getLogger(__name__)
# How far back idle stop looks in CloudWatch: the retention of its 5-minute datapoints.
IDLE_METRICS_WINDOW = timedelta(days=63)
IDLE_METRICS_CHECK_SECONDS = 300

API_KEY_PREFIX = "rdk_"
MAX_RATE = 10_000
MAX_BURST = 5_000


class EndpointConflict(DomainError):
    """The endpoint is not in a state that allows this (a rollout is running, nothing to roll back to)."""

    kind = "conflict"


@dataclass(frozen=True)
class IssuedEndpoint:
    endpoint: Endpoint
    # The public API key, returned once (creation or rotation); None for a private endpoint.
    api_key: str | None


def _new_api_key() -> tuple[str, str, str]:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_secret(key), key[:12]


def _validate_options(target: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The target's own options, plus ``throttle`` ({"rate", "burst"}) for the public API."""
    options = dict(options)
    throttle = options.pop("throttle", None)
    try:
        validated = get_target(target).validate_options(options)
    except TargetOptionsError as exc:
        raise ValidationError({"options": str(exc)}) from exc
    if throttle is not None:
        if not isinstance(throttle, dict) or set(throttle) - {"rate", "burst"}:
            raise ValidationError({"options": 'Option "throttle" must look like {"rate": 10, "burst": 20}.'})
        rate, burst = throttle.get("rate", settings.GATEWAY_DEFAULT_RATE), throttle.get("burst", 0)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 < rate <= MAX_RATE:
            raise ValidationError(
                {"options": f"throttle.rate must be a number of requests per second up to {MAX_RATE}."}
            )
        burst = burst or max(1, int(rate))
        if not isinstance(burst, int) or isinstance(burst, bool) or not 1 <= burst <= MAX_BURST:
            raise ValidationError({"options": f"throttle.burst must be a whole number from 1 to {MAX_BURST}."})
        validated["throttle"] = {"rate": rate, "burst": burst}
    return validated


def model_version_check(model_version: ModelVersion, owner: User) -> None:
    if model_version.status != ModelVersion.Status.READY:
        raise ValidationError(
            {
                "model": f"{model_version} is {model_version.status}, not ready: {model_version.status_reason}".rstrip(
                    ": "
                )
            }
        )
    if model_version.owner_id != owner.pk:
        raise ValidationError({"model": "An endpoint can only serve its owner's models."})


def endpoint_create(
    *,
    owner: User,
    name: str,
    model_version: ModelVersion,
    target: str = Endpoint.Target.LOCAL,
    options: Mapping[str, Any] | None = None,
    public: bool = False,
) -> IssuedEndpoint:
    try:
        name_validator(name)
    except ValidationError as exc:
        raise ValidationError({"name": exc.messages}) from exc
    if target not in Endpoint.Target.values:
        raise ValidationError({"target": f"Unknown target {target!r}; use one of {', '.join(Endpoint.Target.values)}."})
    model_version_check(model_version, owner)
    validated = _validate_options(target, options or {})
    key, key_hash, key_prefix = _new_api_key() if public else (None, "", "")
    base = settings.PUBLIC_BASE_URL
    with transaction.atomic():
        _lock_owner(owner)
        quota_check(owner=owner, target=target, options=validated)
        # A name is released only when its endpoint is fully deleted, and only to its owner.
        Endpoint.objects.filter(name=name, owner=owner, status=Endpoint.Status.DELETED).delete()
        taken = ValidationError({"name": f"An endpoint named {name!r} already exists."})
        if Endpoint.objects.filter(name=name).exists():
            raise taken
        try:
            with transaction.atomic():
                endpoint = Endpoint.objects.create(
                    name=name,
                    owner=owner,
                    target=target,
                    options=validated,
                    public=public,
                    api_key_hash=key_hash,
                    api_key_prefix=key_prefix,
                    invoke_url=f"{base}/api/v1/endpoints/{name}/invocations",
                    public_url=f"{base}/e/{name}/invocations" if public else "",
                )
        except IntegrityError as exc:
            # Another user's creation of this name committed after the check above (the
            # owner lock serialises one user's requests only): the unique name decides.
            raise taken from exc
        deployment_start(endpoint=endpoint, model_version=model_version, kind=Deployment.Kind.CREATE)
    gateway.route_forget(name)
    return IssuedEndpoint(endpoint=endpoint, api_key=key)


def _lock_owner(owner: User) -> None:
    """Serialise one user's quota checks with their writes: two concurrent creations must
    not both fit in the room left for one. FOR NO KEY UPDATE: it excludes itself but not the
    key-share lock PostgreSQL takes on the user row when a row naming it is written (the
    endpoint row updated twice in endpoint_delete's transaction), which would deadlock an
    update waiting here for the endpoint with a delete holding it."""
    get_user_model().objects.select_for_update(no_key=True).filter(pk=owner.pk).first()


def endpoint_locked(endpoint: Endpoint) -> Endpoint:
    """Re-read the endpoint under a write lock and refuse while a rollout is running."""
    locked = Endpoint.objects.select_for_update().get(pk=endpoint.pk)
    if locked.status in (Endpoint.Status.DELETING, Endpoint.Status.DELETED):
        raise EndpointConflict(f"Endpoint {locked.name} is {locked.status}.")
    if Deployment.objects.filter(endpoint=locked, status__in=Deployment.ACTIVE).exists():
        raise EndpointConflict(f"Endpoint {locked.name} has a deployment in progress; wait for it to finish.")
    return locked


def _refuse_asleep(endpoint: Endpoint) -> None:
    """Update and rollback need a serving endpoint: a stopped one is started first."""
    if endpoint.status in (Endpoint.Status.STOPPING, *Endpoint.ASLEEP):
        raise EndpointConflict(f"Endpoint {endpoint.name} is {endpoint.status}; start it before changing its model.")
    _refuse_shadowed(endpoint)


def _refuse_shadowed(endpoint: Endpoint) -> None:
    """While a shadow runs, the live version changes only by promoting or ending it."""
    if Shadow.objects.filter(endpoint=endpoint, status__in=Shadow.ACTIVE).exists():
        raise EndpointConflict(f"Endpoint {endpoint.name} has a shadow; promote it or stop it first.")


def endpoint_update(*, endpoint: Endpoint, model_version: ModelVersion) -> Deployment:
    """Blue/green rollout of another version; the current one serves until the switch."""
    model_version_check(model_version, endpoint.owner)
    with transaction.atomic():
        _lock_owner(endpoint.owner)
        locked = endpoint_locked(endpoint)
        _refuse_asleep(locked)
        # The limits may have shrunk since creation (staff, the allowed instance types).
        quota_check(owner=locked.owner, target=locked.target, options=locked.options, endpoint=locked)
        deployment = deployment_start(endpoint=locked, model_version=model_version, kind=Deployment.Kind.UPDATE)
    endpoint.refresh_from_db()
    return deployment


def endpoint_rollback(*, endpoint: Endpoint) -> Deployment:
    """Roll back to the previously live version (again blue/green)."""
    with transaction.atomic():
        locked = endpoint_locked(endpoint)
        _refuse_asleep(locked)
        if locked.previous_model_version is None:
            raise EndpointConflict(f"Endpoint {locked.name} has no previous version to roll back to.")
        deployment = deployment_start(
            endpoint=locked, model_version=locked.previous_model_version, kind=Deployment.Kind.ROLLBACK
        )
    endpoint.refresh_from_db()
    return deployment


def _pause_or_resume(*, endpoint: Endpoint, kind: str, source: str, interim: str, verb: str) -> Deployment:
    with transaction.atomic():
        locked = endpoint_locked(endpoint)
        _refuse_shadowed(locked)
        if locked.status != source or locked.model_version is None:
            raise EndpointConflict(
                f"Endpoint {locked.name} is {locked.status}; only a {source} endpoint can be {verb}."
            )
        Endpoint.objects.filter(pk=locked.pk).update(status=interim, error="", updated_at=timezone.now())
        deployment = deployment_start(endpoint=locked, model_version=locked.model_version, kind=kind)
    gateway.route_forget(endpoint.name)
    endpoint.refresh_from_db()
    return deployment


def endpoint_stop(*, endpoint: Endpoint) -> Deployment:
    """Remove what serves (and is billed), keep what serving again needs (docs/pipeline.md)."""
    return _pause_or_resume(
        endpoint=endpoint,
        kind=Deployment.Kind.STOP,
        source=Endpoint.Status.LIVE,
        interim=Endpoint.Status.STOPPING,
        verb="stopped",
    )


def endpoint_start(*, endpoint: Endpoint) -> Deployment:
    """Serve a stopped endpoint again from what its stop kept: nothing is built."""
    return _pause_or_resume(
        endpoint=endpoint,
        kind=Deployment.Kind.START,
        source=Endpoint.Status.STOPPED,
        interim=Endpoint.Status.STARTING,
        verb="started",
    )


def endpoint_wake(*, endpoint_id: int) -> Deployment | None:
    """Start a stopped endpoint with ``wake_on_request`` (a call reached it); a no-op when it
    is starting already or no longer stopped, so concurrent calls start it once."""
    endpoint = Endpoint.objects.filter(pk=endpoint_id, status=Endpoint.Status.STOPPED).first()
    if endpoint is None or not endpoint.options.get("wake_on_request"):
        return None
    try:
        return endpoint_start(endpoint=endpoint)
    except EndpointConflict:
        return None


def endpoint_idle_stop_after(endpoint: Endpoint) -> timedelta | None:
    """How long the endpoint may go without an invocation: its option ``idle_stop_after``,
    else its target's installation default (``RDEPLOY_IDLE_STOP_AFTER_<TARGET>``)."""
    if "idle_stop_after" in endpoint.options:
        return idle_stop_after_parse(endpoint.options["idle_stop_after"])
    return settings.IDLE_STOP_AFTER.get(endpoint.target)


def endpoint_idle_since(endpoint: Endpoint, *, now: datetime) -> datetime:
    """The last invocation or the end of the last deployment, whichever is later (the
    creation without either). Invocations: SageMaker's CloudWatch ``Invocations``, the local
    runtime's access lines in the endpoint's log. Raises AwsError when CloudWatch fails."""
    floor = _idle_floor(endpoint)
    if endpoint.target == Endpoint.Target.SAGEMAKER:
        start = max(floor, now - IDLE_METRICS_WINDOW)
        last_call = cloudwatch.last_invocation(
            endpoint=str(endpoint.runtime.get("endpoint_name") or endpoint_name(endpoint)),
            variant=str(endpoint.runtime.get("variant", "AllTraffic")),
            start=start,
            end=now,
        )
        return max(last_call or start, floor)
    last_call = LogLine.objects.filter(
        endpoint=endpoint, source=LogLine.Source.RUNTIME, message__contains="/invocations"
    ).aggregate(at=Max("created_at"))["at"]
    return max(last_call or floor, floor)


def _idle_floor(endpoint: Endpoint) -> datetime:
    """Idle at most since then: the end of its last deployment, or its creation."""
    last_deployment = Deployment.objects.filter(endpoint=endpoint).aggregate(at=Max("finished_at"))["at"]
    return last_deployment or endpoint.created_at


@dataclass(frozen=True)
class IdleStopNotice:
    idle_since: datetime
    stops_at: datetime


def endpoint_idle_stop_notice(endpoint: Endpoint, *, now: datetime | None = None) -> IdleStopNotice | None:
    """When a live endpoint will be stopped for idleness, from a day before (or from half
    the period, when that is shorter than two days) until it is; None otherwise."""
    period = endpoint_idle_stop_after(endpoint) if endpoint.status == Endpoint.Status.LIVE else None
    if period is None:
        return None
    now = now or timezone.now()
    warning = min(timedelta(days=1), period / 2)
    if now < _idle_floor(endpoint) + period - warning:
        return None  # too soon to warn whatever the traffic: no need to count it
    idle_since = _idle_since_for_page(endpoint, now=now)
    if idle_since is None:
        return None
    stops_at = idle_since + period
    return IdleStopNotice(idle_since, stops_at) if now >= stops_at - warning else None


def _idle_since_for_page(endpoint: Endpoint, *, now: datetime) -> datetime | None:
    """endpoint_idle_since, with CloudWatch's answer (or its failure: no warning rather than
    a slow page) kept IDLE_METRICS_CHECK_SECONDS for a SageMaker endpoint's page views."""
    if endpoint.target != Endpoint.Target.SAGEMAKER:
        return endpoint_idle_since(endpoint, now=now)
    key = f"rdeploy:idle:since:{endpoint.pk}:{endpoint.created_at.timestamp()}"
    try:
        cached = cache.get(key)
    except Exception:  # Redis down: ask CloudWatch for this view only
        cached = None
    if not isinstance(cached, str):
        try:
            cached = endpoint_idle_since(endpoint, now=now).isoformat()
        except (AwsError, AwsConfigurationError):
            cached = ""
        with contextlib.suppress(Exception):
            cache.set(key, cached, timeout=IDLE_METRICS_CHECK_SECONDS)
    return datetime.fromisoformat(cached) if cached else None


def endpoints_stop_idle(*, now: datetime | None = None) -> int:
    """Stop every live endpoint that served no invocation for its ``idle_stop_after`` (or
    its target's default) and went live longer ago than that; how many it stopped. ``now``
    is the clock's seam for tests."""
    now = now or timezone.now()
    stopped = 0
    for endpoint in Endpoint.objects.filter(status=Endpoint.Status.LIVE):
        period = endpoint_idle_stop_after(endpoint)
        if period is None:
            continue
        if now - _idle_floor(endpoint) < period:
            continue  # deployed or created within the period: not idle whatever the traffic
        if endpoint.target == Endpoint.Target.SAGEMAKER and not _cloudwatch_turn(endpoint):
            continue
        try:
            idle_since = endpoint_idle_since(endpoint, now=now)
        except (AwsError, AwsConfigurationError) as exc:
            logger.warning("Idle stop skipped %s: CloudWatch did not answer (%s)", endpoint.name, exc)
            continue
        if now - idle_since < period:
            continue
        try:
            deployment = endpoint_stop(endpoint=endpoint)
        except EndpointConflict:
            continue
        # Why and since when, for the dashboard's "stopped: idle since ..." (docs/pipeline.md).
        # Its own column: the worker may already be recording the stop's resources.
        Deployment.objects.filter(pk=deployment.pk).update(idle_since=idle_since)
        LogLine.objects.create(
            endpoint=endpoint,
            source=LogLine.Source.ENDPOINT,
            message=f"Stopped: idle since {idle_since:%Y-%m-%d %H:%M} UTC, longer than its idle_stop_after "
            f"({_period_text(period)}).",
        )
        stopped += 1
    return stopped


def _cloudwatch_turn(endpoint: Endpoint, purpose: str = "idle") -> bool:
    """Whether the reconciler (every few seconds) may ask CloudWatch about this endpoint
    for ``purpose`` now: once per IDLE_METRICS_CHECK_SECONDS, since each GetMetricStatistics
    is billed."""
    key = f"rdeploy:{purpose}:cloudwatch:{endpoint.pk}:{endpoint.created_at.timestamp()}"
    try:
        return bool(cache.add(key, 1, timeout=IDLE_METRICS_CHECK_SECONDS))
    except Exception:  # Redis down: ask now rather than never stop
        return True


def endpoints_wake_called() -> int:
    """Start every stopped endpoint with ``wake_on_request`` whose public route answered
    calls since it stopped, where that route cannot start it itself (the target's
    ``public_calls_since``: a SageMaker endpoint's API Gateway URL, seen through
    CloudWatch); how many it started. Since it stopped: since its last deployment ended,
    the stop or a failed start, so calls that started it once do not start it again."""
    woken = 0
    for endpoint in Endpoint.objects.filter(status=Endpoint.Status.STOPPED, options__wake_on_request=True):
        if not _cloudwatch_turn(endpoint, "wake"):
            continue
        try:
            calls = get_target(endpoint.target).public_calls_since(endpoint, _idle_floor(endpoint))
        except (AwsError, AwsConfigurationError) as exc:
            logger.warning("Wake check skipped %s: CloudWatch did not answer (%s)", endpoint.name, exc)
            continue
        if not calls or endpoint_wake(endpoint_id=endpoint.pk) is None:
            continue
        LogLine.objects.create(
            endpoint=endpoint,
            source=LogLine.Source.ENDPOINT,
            message=f"Starting: its public API answered {calls} call(s) while it was stopped (wake_on_request).",
        )
        woken += 1
    return woken


def endpoint_stopped_idle_since(endpoint: Endpoint) -> datetime | None:
    """Since when a stopped endpoint had been idle when the reconciler stopped it; None when
    it is not stopped or a person stopped it."""
    if endpoint.status != Endpoint.Status.STOPPED:
        return None
    stop = Deployment.objects.filter(endpoint=endpoint, kind=Deployment.Kind.STOP).order_by("-id").first()
    return stop.idle_since if stop else None


def _period_text(period: timedelta) -> str:
    minutes = int(period.total_seconds()) // 60
    for unit, size in (("d", 24 * 60), ("h", 60)):
        if minutes % size == 0:
            return f"{minutes // size}{unit}"
    return f"{minutes}m"


def endpoint_delete(*, endpoint: Endpoint) -> Deployment | None:
    """Tear everything down (cancelling a rollout in progress); None if already under way."""
    with transaction.atomic():
        locked = Endpoint.objects.select_for_update().get(pk=endpoint.pk)
        if locked.status in (Endpoint.Status.DELETING, Endpoint.Status.DELETED):
            return None
        Endpoint.objects.filter(pk=locked.pk).update(status=Endpoint.Status.DELETING, updated_at=timezone.now())
        model_version = locked.model_version or locked.current_deployment.model_version  # type: ignore[union-attr]
        deployment = deployment_start(endpoint=locked, model_version=model_version, kind=Deployment.Kind.DELETE)
    gateway.route_forget(endpoint.name)
    endpoint.refresh_from_db()
    return deployment


def endpoint_rotate_key(*, endpoint: Endpoint) -> str:
    """A new public API key (the old one stops working at once); returned once."""
    if not endpoint.public:
        raise EndpointConflict(f"Endpoint {endpoint.name} is not public; it has no API key.")
    key, key_hash, key_prefix = _new_api_key()
    Endpoint.objects.filter(pk=endpoint.pk).update(api_key_hash=key_hash, api_key_prefix=key_prefix)
    endpoint.api_key_hash, endpoint.api_key_prefix = key_hash, key_prefix
    gateway.route_forget(endpoint.name)
    LogLine.objects.create(endpoint=endpoint, source=LogLine.Source.GATEWAY, message="The public API key was rotated.")
    # A cloud-hosted public API (API Gateway's authorizer) gets the new hash now, not at
    # the next reconciliation, and whatever the endpoint's status.
    enqueue(task_names.ENDPOINT_PUSH_API_KEY, endpoint.pk)
    return key


def endpoint_push_api_key(*, endpoint_id: int) -> None:
    """Give the endpoint's current key hash to its target's public API, if it hosts one."""
    endpoint = Endpoint.objects.filter(pk=endpoint_id).exclude(status=Endpoint.Status.DELETED).first()
    if endpoint is not None and endpoint.public:
        get_target(endpoint.target).push_api_key(endpoint)


def endpoint_invoke(
    *, user: User | AnonymousUser | gateway.TokenPrincipal, name: str, body: bytes, headers: Mapping[str, str]
) -> InvocationResult | None:
    """Forward a prediction request for a user who may see the endpoint; None if they may not."""
    route = gateway.route_for(name)
    if route is None or not user.is_authenticated or (route.owner_id != user.pk and not user.is_staff):
        return None
    return gateway.gateway_forward(route=route, body=body, headers=headers)
