"""Names, tags and settings of the SageMaker target's resources.

Names derive from the resource prefix, the installation id, the endpoint name and the
deployment id, so a step rerun after a crash finds what it created, and two installations
sharing an AWS account never reach for the same name (``RDEPLOY_INSTALLATION_ID`` has no
hyphens, so ``rdeploy-a-...`` and ``rdeploy-ab-...`` cannot be read two ways). Per rollout:
a SageMaker model and an endpoint config (``<prefix>-<installation>-<endpoint>-d<deployment>``).
Per endpoint, reused by every rollout: the SageMaker endpoint and the public API. A name
over the service's limit keeps a hash of the full name (``join_name``), so it stays
deterministic and unique.
"""

from __future__ import annotations

import hashlib

from django.conf import settings

from deployer.integrations.aws.tagging import resource_tags
from deployer.models import Deployment, Endpoint, ExternalResource
from deployer.targets.base import PermanentStepError, StepContext

VARIANT = "main"
# The variant SageMaker copies live requests to while a shadow runs.
SHADOW_VARIANT = "shadow"
STAGE = "v1"

# Resources that belong to the endpoint (reused across rollouts) rather than to one rollout.
PER_ENDPOINT_KINDS = frozenset(
    {
        ExternalResource.Kind.SAGEMAKER_ENDPOINT,
        ExternalResource.Kind.AUTOSCALING_TARGET,
        ExternalResource.Kind.IAM_ROLE,
        ExternalResource.Kind.LAMBDA_FUNCTION,
        ExternalResource.Kind.APIGATEWAY_API_KEY,
        ExternalResource.Kind.APIGATEWAY_REST_API,
        ExternalResource.Kind.APIGATEWAY_USAGE_PLAN,
        ExternalResource.Kind.CLOUDWATCH_ALARM,
        ExternalResource.Kind.LOG_GROUP,
    }
)
SHARED_KINDS = frozenset({ExternalResource.Kind.MODEL_DATA, ExternalResource.Kind.ECR_IMAGE})


def join_name(*parts: str, limit: int = 63) -> str:
    """Join ``parts`` with hyphens; too long names keep a hash of the full name."""
    name = "-".join(parts)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def prefix() -> str:
    """The start of every name this installation gives a resource: ``<prefix>-<installation>``."""
    return f"{settings.RDEPLOY_RESOURCE_PREFIX}-{settings.INSTALLATION_ID}"


def endpoint_name(endpoint: Endpoint) -> str:
    return join_name(prefix(), endpoint.name)


def rollout_name(deployment: Deployment) -> str:
    """The SageMaker model and endpoint config of one rollout."""
    return join_name(prefix(), deployment.endpoint.name, f"d{deployment.pk}")


def capture_key_prefix(config: str) -> str:
    """Where SageMaker's data capture writes for the shadow endpoint config ``config``
    (it adds ``/<endpoint>/<variant>/yyyy/mm/dd/hh/<file>.jsonl``); derived from the
    config's name so deleting the config anywhere (teardown, gc) finds its captures."""
    return f"{prefix()}/shadow-capture/{config}"


def api_name(endpoint: Endpoint) -> str:
    """The public API's REST API, usage plan and usage-plan key."""
    return join_name(prefix(), endpoint.name)


def function_name(endpoint: Endpoint) -> str:
    return join_name(prefix(), endpoint.name, limit=64)


def role_name(endpoint: Endpoint) -> str:
    return join_name(prefix(), endpoint.name, "invoke", limit=64)


def endpoint_log_group(endpoint: Endpoint) -> str:
    """Where SageMaker writes the endpoint's container output."""
    return f"/aws/sagemaker/Endpoints/{endpoint_name(endpoint)}"


def function_log_group(endpoint: Endpoint) -> str:
    """Where Lambda writes the public API function's output."""
    return f"/aws/lambda/{function_name(endpoint)}"


def build_log_group() -> str:
    """The installation's CodeBuild project's group (one stream per build)."""
    return f"/aws/codebuild/{join_name(prefix(), 'image-builder')}"


def required_setting(setting: str) -> str:
    value = getattr(settings, setting, None)
    if not value:
        raise PermanentStepError(
            f"The SageMaker target needs the {setting} setting, which is not set. "
            "Ask the administrator to configure it (see docs/sagemaker.md)."
        )
    return str(value)


def aws_region() -> str:
    if not settings.AWS_REGION:
        raise PermanentStepError("The SageMaker target needs AWS_DEFAULT_REGION (or AWS_REGION), which is not set.")
    return str(settings.AWS_REGION)


def step_tags(ctx: StepContext) -> dict[str, str]:
    return resource_tags(settings.INSTALLATION_ID, endpoint=ctx.endpoint.name, deployment=ctx.deployment.pk)


def s3_location(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key
