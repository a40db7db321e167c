"""Application Auto Scaling: target tracking on a SageMaker variant's invocations per instance."""

from __future__ import annotations

from botocore.exceptions import ClientError

from deployer.integrations.aws.client import aws_client, is_not_found, raises_aws_error

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


@raises_aws_error
def enable(
    endpoint: str, variant: str, *, min_capacity: int, max_capacity: int, target: float, tags: dict[str, str]
) -> None:
    """Register the variant and (re)put its target-tracking policy; both calls are upserts."""
    client = aws_client("application-autoscaling")
    rid = resource_id(endpoint, variant)
    client.register_scalable_target(
        ServiceNamespace=NAMESPACE,
        ResourceId=rid,
        ScalableDimension=DIMENSION,
        MinCapacity=min_capacity,
        MaxCapacity=max_capacity,
        Tags=tags,
    )
    client.put_scaling_policy(
        PolicyName=f"{endpoint}-invocations",
        ServiceNamespace=NAMESPACE,
        ResourceId=rid,
        ScalableDimension=DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(target),
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    )


@raises_aws_error
def disable(endpoint: str, variant: str) -> None:
    """Deregister (also deletes its policies); already deregistered counts as done."""
    try:
        aws_client("application-autoscaling").deregister_scalable_target(
            ServiceNamespace=NAMESPACE, ResourceId=resource_id(endpoint, variant), ScalableDimension=DIMENSION
        )
    except ClientError as error:
        # AWS answers ObjectNotFoundException; some emulators a ValidationException.
        if not (is_not_found(error) or "No scalable target" in str(error)):
            raise


@raises_aws_error
def is_registered(endpoint: str, variant: str) -> bool:
    found = aws_client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[resource_id(endpoint, variant)], ScalableDimension=DIMENSION
    )["ScalableTargets"]
    return bool(found)


@raises_aws_error
def scaled_endpoints(prefix: str) -> list[tuple[str, str]]:
    """(endpoint, variant) of every registered SageMaker variant whose endpoint starts with ``prefix``."""
    found: list[tuple[str, str]] = []
    paginator = aws_client("application-autoscaling").get_paginator("describe_scalable_targets")
    for page in paginator.paginate(ServiceNamespace=NAMESPACE):
        for target in page["ScalableTargets"]:
            _, endpoint, _, variant = target["ResourceId"].split("/", 3)
            if endpoint.startswith(prefix):
                found.append((endpoint, variant))
    return found
