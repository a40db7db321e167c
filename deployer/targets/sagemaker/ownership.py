"""Whose a cloud resource is. Before rdeploy adopts an existing resource ("already exists"
counts as its own after a crash), changes one or deletes one, it reads the resource's
``rdeploy:installation`` tag, and refuses one another installation tagged or that carries
no rdeploy tag at all: two installations sharing an AWS account never serve, update or
delete each other's endpoints, even if their names met (names carry the installation id,
``names.prefix``, so they should not).

Two kinds may be untagged and still ours: log groups (SageMaker and Lambda create a missing
group themselves, untagged, and the name carries the installation id) and the ECR repository
(installation-wide infrastructure an operator may create by hand, docs/sagemaker.md).
Checking first, then acting, leaves a moment in which another installation could create the
same name; with names unique per installation only a hand-made resource can be there.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings

from deployer.integrations.aws import apigateway, autoscaling, cloudwatch, ecr, iam, lambda_, logs, s3, sagemaker
from deployer.integrations.aws.tagging import INSTALLATION
from deployer.models import ExternalResource
from deployer.targets.base import PermanentStepError
from deployer.targets.sagemaker.names import s3_location


class ForeignResource(PermanentStepError):
    """The resource exists and is not this installation's: rdeploy leaves it untouched."""

    def __init__(self, kind: str, identifier: str, owner: str | None) -> None:
        what = f"{kind.replace('_', ' ')} {identifier}"
        remedy = "Rename the endpoint, or ask the administrator to remove the other resource."
        if kind == ExternalResource.Kind.ECR_IMAGE:
            what = f"ECR repository {identifier.partition(':')[0]}"
            remedy = "Ask the administrator to set RDEPLOY_ECR_REPOSITORY to a repository of this installation's own."
        if owner is None:
            reason = f"carries no {INSTALLATION} tag, so rdeploy did not make it"
        else:
            reason = f"belongs to rdeploy installation {owner!r} (its {INSTALLATION} tag)"
        super().__init__(
            f"The {what} already exists and {reason}; this installation is "
            f"{settings.INSTALLATION_ID!r}, so rdeploy will not adopt, change or delete it. {remedy}"
        )
        self.kind = kind
        self.identifier = identifier
        self.owner = owner


def _object_tags(uri: str) -> dict[str, str] | None:
    return s3.object_tags(*s3_location(uri))


def _scalable_target_tags(identifier: str) -> dict[str, str] | None:
    # Application Auto Scaling's tags cannot be listed everywhere (moto has no
    # ListTagsForResource for it): a scalable target is its endpoint's, or, left behind
    # by a deleted endpoint, goes by its name (which carries the installation id).
    endpoint, _, variant = identifier.partition("/")
    tags = sagemaker.tags_by_name("endpoint", endpoint)
    if tags is None and autoscaling.is_registered(endpoint, variant):
        return {INSTALLATION: str(settings.INSTALLATION_ID)}
    return tags


def _repository_tags(identifier: str) -> dict[str, str] | None:
    return ecr.repository_tags(identifier.partition(":")[0])


# How to read the tags of each kind of resource, given its ExternalResource identifier;
# None means it does not exist.
TAG_READERS: dict[str, Callable[[str], dict[str, str] | None]] = {
    ExternalResource.Kind.MODEL_DATA: _object_tags,
    ExternalResource.Kind.BUILD_CONTEXT: _object_tags,
    ExternalResource.Kind.SAGEMAKER_MODEL: lambda name: sagemaker.tags_by_name("model", name),
    ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG: lambda name: sagemaker.tags_by_name("endpoint-config", name),
    ExternalResource.Kind.SAGEMAKER_ENDPOINT: lambda name: sagemaker.tags_by_name("endpoint", name),
    ExternalResource.Kind.AUTOSCALING_TARGET: _scalable_target_tags,
    ExternalResource.Kind.IAM_ROLE: iam.role_tags,
    ExternalResource.Kind.LAMBDA_FUNCTION: lambda_.function_tags,
    ExternalResource.Kind.APIGATEWAY_API_KEY: apigateway.api_key_tags,
    ExternalResource.Kind.APIGATEWAY_REST_API: apigateway.rest_api_tags,
    ExternalResource.Kind.APIGATEWAY_USAGE_PLAN: apigateway.usage_plan_tags,
    ExternalResource.Kind.ECR_IMAGE: _repository_tags,
    ExternalResource.Kind.CLOUDWATCH_ALARM: cloudwatch.alarm_tags,
    ExternalResource.Kind.LOG_GROUP: logs.log_group_tags,
}
MAY_BE_UNTAGGED = frozenset({ExternalResource.Kind.LOG_GROUP, ExternalResource.Kind.ECR_IMAGE})


def ensure_ours(kind: str, identifier: str) -> bool:
    """Whether the resource exists, once it is known to be this installation's (or
    missing); raises ``ForeignResource`` when it is not. Kinds that are not in the cloud
    count as existing."""
    read = TAG_READERS.get(kind)
    if read is None:
        return True
    tags = read(identifier)
    if tags is None:
        return False
    owner = tags.get(INSTALLATION)
    if owner == settings.INSTALLATION_ID or (owner is None and kind in MAY_BE_UNTAGGED):
        return True
    raise ForeignResource(kind, identifier, owner)
