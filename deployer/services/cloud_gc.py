"""Garbage collection of the SageMaker target's cloud resources (``manage.py rdeploy_gc``):
what carries this installation's tags but no live database row owns (leaks from crashes or
manual edits), untagged log groups under rdeploy's names no live endpoint writes to, and
images no endpoint has used for longer than a grace period (docs/sagemaker.md, "Garbage
collection")."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from deployer.integrations.aws import tagging
from deployer.integrations.aws.tagging import CloudResource
from deployer.models import Endpoint, ExternalResource
from deployer.services.forgotten import forgotten_report
from deployer.targets.sagemaker.names import prefix
from deployer.targets.sagemaker.ownership import ForeignResource
from deployer.targets.sagemaker.teardown import delete_cloud_resource

# Images no endpoint uses any more are removed by `rdeploy_gc --delete` after this long:
# redeploying a recently deleted model should not rebuild.
IMAGE_GRACE_SECONDS = 7 * 24 * 3600


def cloud_orphans(*, image_grace_seconds: float = IMAGE_GRACE_SECONDS) -> list[CloudResource]:
    """Cloud resources carrying this installation's tags that no live database row owns,
    and images no endpoint has used for longer than the grace period."""
    cutoff = timezone.now() - timedelta(seconds=image_grace_seconds)
    owned: set[tuple[str, str]] = set()
    rows = ExternalResource.objects.live().filter(target=Endpoint.Target.SAGEMAKER)
    for row in rows.select_related("endpoint"):
        if row.endpoint is not None and row.endpoint.status != Endpoint.Status.DELETED:
            owned.add((row.kind, row.identifier))
            # The groups its endpoint or function logs to, recorded or not (an endpoint
            # deployed before rdeploy made them has them from SageMaker and Lambda).
            if row.kind == ExternalResource.Kind.SAGEMAKER_ENDPOINT:
                owned.add((ExternalResource.Kind.LOG_GROUP, f"/aws/sagemaker/Endpoints/{row.identifier}"))
            elif row.kind == ExternalResource.Kind.LAMBDA_FUNCTION:
                owned.add((ExternalResource.Kind.LOG_GROUP, f"/aws/lambda/{row.identifier}"))
        elif row.kind == ExternalResource.Kind.ECR_IMAGE:
            since = row.details.get("unused_since")
            if not since or datetime.fromisoformat(since) > cutoff:
                owned.add((row.kind, row.identifier))
    inventory = tagging.inventory(
        installation=settings.INSTALLATION_ID,
        prefix=prefix(),
        bucket=settings.RDEPLOY_S3_BUCKET,
        repository=str(settings.RDEPLOY_ECR_REPOSITORY),
    )
    return [resource for resource in inventory if (resource.kind, resource.identifier) not in owned]


def cloud_orphans_delete(orphans: list[CloudResource]) -> list[ForeignResource]:
    """Delete ``orphans`` (endpoints first, so their configs and models can go) and mark
    any database record of them deleted. One found to be another installation's by the
    time it is deleted (``cloud_orphans`` lists only this installation's) is left alone
    and returned with the reason."""
    order: list[str] = [
        ExternalResource.Kind.APIGATEWAY_USAGE_PLAN,
        ExternalResource.Kind.APIGATEWAY_API_KEY,
        ExternalResource.Kind.APIGATEWAY_REST_API,
        ExternalResource.Kind.LAMBDA_FUNCTION,
        ExternalResource.Kind.IAM_ROLE,
        ExternalResource.Kind.AUTOSCALING_TARGET,
        ExternalResource.Kind.SAGEMAKER_ENDPOINT,
        ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG,
        ExternalResource.Kind.SAGEMAKER_MODEL,
        ExternalResource.Kind.CLOUDWATCH_ALARM,
        ExternalResource.Kind.LOG_GROUP,
        ExternalResource.Kind.BUILD_CONTEXT,
        ExternalResource.Kind.MODEL_DATA,
        ExternalResource.Kind.ECR_IMAGE,
    ]
    refused: list[ForeignResource] = []
    for resource in sorted(orphans, key=lambda r: order.index(r.kind) if r.kind in order else len(order)):
        try:
            delete_cloud_resource(resource.kind, resource.identifier)
        except ForeignResource as refusal:
            refused.append(refusal)
            continue
        ExternalResource.objects.live().named(Endpoint.Target.SAGEMAKER, resource.kind, resource.identifier).update(
            deleted_at=timezone.now()
        )
    return refused


def gc_report(orphans: list[CloudResource]) -> list[str]:
    """What `rdeploy_gc` and beat's daily report say: what still costs money although nobody
    uses it (listed only, never deleted: a stopped endpoint is its owner's to delete), then
    the orphans."""
    lines = [
        f"Still costs {item.monthly.quantize(Decimal('0.01'))} {item.currency}/month: {item.kind} "
        f"{item.name} (since {item.since:%Y-%m-%d})"
        for item in forgotten_report()
    ]
    for resource in orphans:
        owner = f" (endpoint {resource.endpoint})" if resource.endpoint else ""
        lines.append(f"{resource.kind} {resource.identifier}{owner}")
    if not orphans:
        lines.append("No orphaned resources.")
    return lines
