"""Tags on everything rdeploy creates, and an inventory of what carries them.

The inventory lists each service directly (by name prefix, then tags) rather than through
the Resource Groups Tagging API, which covers neither ECR images, API Gateway keys nor
Application Auto Scaling targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from deployer.integrations.aws import apigateway, autoscaling, cloudwatch, ecr, iam, lambda_, logs, s3, sagemaker
from deployer.models import ExternalResource

INSTALLATION = "rdeploy:installation"
ENDPOINT = "rdeploy:endpoint"
DEPLOYMENT = "rdeploy:deployment"
# Installation-wide infrastructure (the ECR repository, the CodeBuild project).
SCOPE = "rdeploy:scope"


def resource_tags(installation: str, *, endpoint: str | None = None, deployment: int | None = None) -> dict[str, str]:
    tags = {INSTALLATION: installation}
    if endpoint is None:
        tags[SCOPE] = "installation"
    else:
        tags[ENDPOINT] = endpoint
    if deployment is not None:
        tags[DEPLOYMENT] = str(deployment)
    return tags


@dataclass(frozen=True)
class CloudResource:
    kind: str  # the ExternalResource.Kind rdeploy records for it
    identifier: str  # the ExternalResource.identifier
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.tags.get(ENDPOINT, "")


def log_group_prefixes(prefix: str) -> tuple[str, ...]:
    """The groups SageMaker (``/aws/sagemaker/Endpoints/<endpoint>``) and Lambda
    (``/aws/lambda/<function>``) write an endpoint's logs to, for rdeploy's names."""
    return (f"/aws/sagemaker/Endpoints/{prefix}-", f"/aws/lambda/{prefix}-")


def inventory(*, installation: str, prefix: str, bucket: str | None, repository: str) -> Iterator[CloudResource]:
    """Every resource of every service this installation tagged (or, for the few that
    cannot carry tags, named with its prefix), excluding installation-wide infrastructure."""

    def ours(tags: dict[str, str]) -> bool:
        return tags.get(INSTALLATION) == installation and SCOPE not in tags

    # With the hyphen: prefix "rdeploy-a" must not take in "rdeploy-ab-...".
    names = f"{prefix}-"

    endpoint_tags: dict[str, dict[str, str]] = {}
    for name, arn in sagemaker.endpoints(names):
        tags = endpoint_tags[name] = sagemaker.tags_of(arn)
        if ours(tags):
            yield CloudResource(ExternalResource.Kind.SAGEMAKER_ENDPOINT, name, tags)
    for name, arn in sagemaker.endpoint_configs(names):
        tags = sagemaker.tags_of(arn)
        if ours(tags):
            yield CloudResource(ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG, name, tags)
    for name, arn in sagemaker.models(names):
        tags = sagemaker.tags_of(arn)
        if ours(tags):
            yield CloudResource(ExternalResource.Kind.SAGEMAKER_MODEL, name, tags)
    for endpoint, variant in autoscaling.scaled_endpoints(names):
        # A scalable target belongs to whoever owns its endpoint (its own tags cannot be
        # listed everywhere); one left behind by a deleted endpoint goes by the prefix.
        tags = endpoint_tags.get(endpoint, {INSTALLATION: installation})
        if ours(tags):
            yield CloudResource(ExternalResource.Kind.AUTOSCALING_TARGET, f"{endpoint}/{variant}", tags)
    for name, arn in lambda_.functions(names):
        tags = lambda_.tags_of(arn)
        if ours(tags):
            yield CloudResource(ExternalResource.Kind.LAMBDA_FUNCTION, name, tags)
    for name, _arn in iam.roles(f"/{prefix}/"):
        tags = iam.tags_of(name)
        if ours(tags):
            yield CloudResource(ExternalResource.Kind.IAM_ROLE, name, tags)
    for name, _id, tags in apigateway.rest_apis(names):
        if ours(tags):
            yield CloudResource(ExternalResource.Kind.APIGATEWAY_REST_API, name, tags)
    for name, _id, tags in apigateway.usage_plans(names):
        if ours(tags):
            yield CloudResource(ExternalResource.Kind.APIGATEWAY_USAGE_PLAN, name, tags)
    for name, _id, tags in apigateway.api_keys(names):
        if ours(tags):
            yield CloudResource(ExternalResource.Kind.APIGATEWAY_API_KEY, name, tags)
    for name, arn in cloudwatch.alarms(names):
        tags = cloudwatch.tags_of(arn)
        if ours(tags):
            yield CloudResource(ExternalResource.Kind.CLOUDWATCH_ALARM, name, tags)
    for group_prefix in log_group_prefixes(prefix):
        for name, arn in logs.log_groups(group_prefix):
            tags = logs.tags_of(arn)
            # A service creates the group itself, untagged, when it writes to a missing one
            # (an endpoint from before rdeploy made its groups, a write after teardown):
            # such a group goes by rdeploy's naming, unless another installation tagged it.
            if ours(tags) or INSTALLATION not in tags:
                yield CloudResource(ExternalResource.Kind.LOG_GROUP, name, tags)
    if bucket:
        for key in s3.list_keys(bucket, f"{prefix}/"):
            tags = s3.object_tags(bucket, key) or {}
            if tags.get(INSTALLATION) == installation:
                kind = (
                    ExternalResource.Kind.MODEL_DATA
                    if key.startswith(f"{prefix}/model-data/")
                    else ExternalResource.Kind.BUILD_CONTEXT
                )
                yield CloudResource(kind, f"s3://{bucket}/{key}", tags)
    # The repository may be shared by installations: only this installation's counts.
    if (ecr.repository_tags(repository) or {}).get(INSTALLATION) == installation:
        for tag in ecr.image_tags(repository):
            yield CloudResource(ExternalResource.Kind.ECR_IMAGE, f"{repository}:{tag}", {INSTALLATION: installation})
