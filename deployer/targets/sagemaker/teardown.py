"""Removing what a rollout or an endpoint made: step ``retire_previous`` (the previous
rollout's model and config), the delete steps (``remove_public_api`` ... ``release_artifacts``),
``discard`` of a failed rollout, and ``delete_cloud_resource``, the one way any of it is
deleted (``deployer.services.cloud_gc`` uses it too). Already gone counts as deleted.

Shared artifacts (model data, images) are handed to another endpoint still using them
instead of being deleted; an image nobody uses is kept for ``rdeploy_gc`` to remove later.
A resource that turns out to be another installation's (``ownership``) is left untouched:
its record is dropped and the deployment's log says why.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.utils import timezone

from deployer.integrations.aws import apigateway, autoscaling, cloudwatch, ecr, iam, lambda_, logs, s3, sagemaker
from deployer.integrations.containers import images
from deployer.models import Deployment, Endpoint, ExternalResource, LogLine
from deployer.targets.base import StepContext, StepOutcome
from deployer.targets.sagemaker.cloud_logs import copy_log_lines, log_source
from deployer.targets.sagemaker.image import docker_build_dir
from deployer.targets.sagemaker.names import (
    PER_ENDPOINT_KINDS,
    SHARED_KINDS,
    capture_key_prefix,
    endpoint_log_group,
    function_log_group,
    s3_location,
)
from deployer.targets.sagemaker.ownership import ForeignResource, ensure_ours


def _delete_s3_object(uri: str) -> None:
    s3.delete_object(*s3_location(uri))


def _delete_endpoint_config(name: str) -> None:
    # A shadow's config has data capture files under a prefix named after it: they go
    # first, so a rerun after a crash in between still finds the config and them.
    if settings.RDEPLOY_S3_BUCKET:
        s3.delete_prefix(str(settings.RDEPLOY_S3_BUCKET), f"{capture_key_prefix(name)}/")
    sagemaker.delete_endpoint_config(name)


def _disable_autoscaling(identifier: str) -> None:
    endpoint, _, variant = identifier.partition("/")
    autoscaling.disable(endpoint, variant)


def _delete_image(identifier: str) -> None:
    repository, _, tag = identifier.partition(":")
    ecr.delete_image(repository, tag)


def _remove_docker_build(identifier: str) -> None:
    # Not in the cloud: a local build job (its files hold an ECR login).
    images.remove_job(docker_build_dir(identifier))


# How each kind of resource is deleted, given its ExternalResource identifier.
DELETERS: dict[str, Callable[[str], None]] = {
    ExternalResource.Kind.MODEL_DATA: _delete_s3_object,
    ExternalResource.Kind.BUILD_CONTEXT: _delete_s3_object,
    ExternalResource.Kind.SAGEMAKER_MODEL: sagemaker.delete_model,
    ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG: _delete_endpoint_config,
    ExternalResource.Kind.SAGEMAKER_ENDPOINT: sagemaker.delete_endpoint,
    ExternalResource.Kind.AUTOSCALING_TARGET: _disable_autoscaling,
    ExternalResource.Kind.IAM_ROLE: iam.delete_role,
    ExternalResource.Kind.LAMBDA_FUNCTION: lambda_.delete_function,
    ExternalResource.Kind.APIGATEWAY_API_KEY: apigateway.delete_api_key,
    ExternalResource.Kind.APIGATEWAY_REST_API: apigateway.delete_rest_api,
    ExternalResource.Kind.APIGATEWAY_USAGE_PLAN: apigateway.delete_usage_plan,
    ExternalResource.Kind.ECR_IMAGE: _delete_image,
    ExternalResource.Kind.CLOUDWATCH_ALARM: cloudwatch.delete_alarm,
    ExternalResource.Kind.LOG_GROUP: logs.delete_log_group,
    ExternalResource.Kind.DOCKER_BUILD: _remove_docker_build,
}


def delete_cloud_resource(kind: str, identifier: str) -> None:
    """Delete one resource rdeploy created, named as ExternalResource names it; already
    gone counts as deleted. Raises ``ForeignResource`` (deleting nothing) when the
    resource is another installation's. A resource already gone is not asked to be
    deleted: with the documented IAM policy (tag conditions) AWS would answer a delete of
    a missing resource AccessDenied rather than not-found."""
    delete = DELETERS.get(kind)
    if delete is not None and ensure_ours(kind, identifier):
        delete(identifier)


def _other_user(kind: str, identifier: str, endpoint: Endpoint) -> Deployment | None:
    """A deployment of another endpoint still relying on this shared resource, if any."""
    return (
        Deployment.objects.filter(**{f"resources__{kind}": identifier})
        .exclude(endpoint=endpoint)
        .exclude(endpoint__status__in=[Endpoint.Status.DELETED, Endpoint.Status.DELETING])
        .exclude(status=Deployment.Status.FAILED)
        .select_related("endpoint")
        .order_by("-id")
        .first()
    )


def retire_previous(ctx: StepContext) -> StepOutcome:
    previous = ctx.previous
    if previous is None or previous.pk == ctx.deployment.pk:
        return StepOutcome.skipped("Nothing was live before.")
    removed = 0
    for resource in reversed(list(ctx.deployment_resources(previous))):
        if resource.kind in PER_ENDPOINT_KINDS:
            continue
        if resource.kind in SHARED_KINDS and ctx.deployment.resources.get(resource.kind) == resource.identifier:
            continue
        remove_resource(ctx, resource)
        removed += 1
    return StepOutcome.done(f"Removed {removed} resource(s) of the previous version.")


def remove_resource(ctx: StepContext, resource: ExternalResource) -> None:
    """Delete one resource (already gone counts as done) and record that it is gone."""
    kind, identifier = resource.kind, resource.identifier
    if kind in SHARED_KINDS:
        other = _other_user(kind, identifier, ctx.endpoint)
        if other is not None:
            # Another endpoint still serves from it: it now owns the record.
            ctx.hand_over_resource(resource, other)
            return
        if kind == ExternalResource.Kind.ECR_IMAGE:
            # Kept for a grace period (`rdeploy_gc --delete` removes it later), so a
            # redeploy of the same packages does not rebuild.
            ctx.release_resource(resource, unused_since=timezone.now().isoformat())
            return
    try:
        if kind == ExternalResource.Kind.LOG_GROUP:
            ensure_ours(kind, identifier)
            # Its last lines (written since the last collection) go into the endpoint's log first.
            copy_log_lines(ctx.endpoint, {identifier: log_source(identifier)}, drain=True)
        delete_cloud_resource(kind, identifier)
    except ForeignResource as refusal:
        _leave_foreign(ctx, refusal)
        return
    ctx.mark_resource_deleted(kind, identifier)


def _leave_foreign(ctx: StepContext, refusal: ForeignResource) -> None:
    """Not ours to delete: forget the record (a teardown or a failed rollout still
    finishes) and say so in the deployment's log."""
    ctx.log(refusal.message, level=LogLine.Level.WARNING)
    ctx.mark_resource_deleted(refusal.kind, refusal.identifier)


def _remove_kinds(ctx: StepContext, kinds: tuple[str, ...]) -> int:
    resources = [r for r in ctx.live_resources() if r.kind in kinds]
    resources.sort(key=lambda r: (kinds.index(r.kind), -r.pk))
    for resource in resources:
        remove_resource(ctx, resource)
    return len(resources)


def remove_public_api(ctx: StepContext) -> StepOutcome:
    # The usage plan goes before its API and key; the function before its role.
    count = _remove_kinds(
        ctx,
        (
            ExternalResource.Kind.APIGATEWAY_USAGE_PLAN,
            ExternalResource.Kind.APIGATEWAY_API_KEY,
            ExternalResource.Kind.APIGATEWAY_REST_API,
            ExternalResource.Kind.LAMBDA_FUNCTION,
            ExternalResource.Kind.IAM_ROLE,
        ),
    )
    return StepOutcome.done(f"Removed {count} public API resource(s).") if count else StepOutcome.skipped()


def remove_autoscaling(ctx: StepContext) -> StepOutcome:
    count = _remove_kinds(ctx, (ExternalResource.Kind.AUTOSCALING_TARGET,))
    return StepOutcome.done("Autoscaling removed.") if count else StepOutcome.skipped()


def remove_endpoint(ctx: StepContext) -> StepOutcome:
    waiting = []
    for resource in ctx.live_resources().filter(kind=ExternalResource.Kind.SAGEMAKER_ENDPOINT):
        state = sagemaker.describe_endpoint(resource.identifier)
        if state is None:
            ctx.mark_resource_deleted(resource.kind, resource.identifier)
            continue
        try:
            ensure_ours(resource.kind, resource.identifier)
        except ForeignResource as refusal:
            _leave_foreign(ctx, refusal)
            continue
        if state.status != "Deleting":
            sagemaker.delete_endpoint(resource.identifier)
            if sagemaker.describe_endpoint(resource.identifier) is None:
                ctx.mark_resource_deleted(resource.kind, resource.identifier)
                continue
        waiting.append(resource.identifier)
    if waiting:
        return StepOutcome.wait(10, f"Deleting SageMaker endpoint {', '.join(waiting)}.")
    return StepOutcome.done("SageMaker endpoint deleted.")


def remove_models(ctx: StepContext) -> StepOutcome:
    count = _remove_kinds(ctx, (ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG, ExternalResource.Kind.SAGEMAKER_MODEL))
    return StepOutcome.done(f"Removed {count} SageMaker model(s) and config(s).")


def remove_monitoring(ctx: StepContext) -> StepOutcome:
    # A group SageMaker or Lambda made itself (for an endpoint deployed before rdeploy
    # made them) is the endpoint's all the same: recorded now, removed like the others.
    recorded = set(
        ctx.live_resources().filter(kind=ExternalResource.Kind.LOG_GROUP).values_list("identifier", flat=True)
    )
    for group in (endpoint_log_group(ctx.endpoint), function_log_group(ctx.endpoint)):
        if group not in recorded and any(name == group for name, _arn in logs.log_groups(group)):
            ctx.record_resource(ExternalResource.Kind.LOG_GROUP, group)
    # Log groups last, once nothing writes to them any more (SageMaker and Lambda would
    # create them again, untagged, for a late line; rdeploy_gc finds those by name).
    count = _remove_kinds(ctx, (ExternalResource.Kind.CLOUDWATCH_ALARM, ExternalResource.Kind.LOG_GROUP))
    return StepOutcome.done(f"Removed {count} alarm(s) and log group(s).") if count else StepOutcome.skipped()


def release_artifacts(ctx: StepContext) -> StepOutcome:
    count = _remove_kinds(
        ctx,
        (
            ExternalResource.Kind.DOCKER_BUILD,
            ExternalResource.Kind.BUILD_CONTEXT,
            ExternalResource.Kind.MODEL_DATA,
            ExternalResource.Kind.ECR_IMAGE,
        ),
    )
    return StepOutcome.done(f"Released {count} artifact(s); images stay for reuse until rdeploy_gc removes them.")


def discard(ctx: StepContext, created_by: Deployment | None = None) -> None:
    """Remove what ``created_by`` (default: the failed deployment) created, except what the
    live version uses too."""
    live = ctx.previous if ctx.previous is not None and ctx.previous.pk != ctx.deployment.pk else None
    # Newest first, log groups after whatever writes to them.
    resources = sorted(
        ctx.deployment_resources(created_by).order_by("-id"), key=lambda r: r.kind == ExternalResource.Kind.LOG_GROUP
    )
    for resource in resources:
        if live is not None and resource.kind in PER_ENDPOINT_KINDS:
            continue
        if live is not None and live.resources.get(resource.kind) == resource.identifier:
            # The live version uses the same image or model data: it keeps the record.
            ctx.hand_over_resource(resource, live)
            continue
        remove_resource(ctx, resource)
