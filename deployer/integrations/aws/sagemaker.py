"""SageMaker: models, endpoint configs, endpoints, and invocations (sagemaker-runtime)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from deployer.integrations.aws.client import (
    aws_client,
    ok_if_exists,
    ok_if_missing,
    raises_aws_error,
    tag_list,
    unless_missing,
)

# Statuses after which polling stops.
ENDPOINT_READY = "InService"
ENDPOINT_FAILED = frozenset({"Failed", "UpdateRollbackFailed", "OutOfService"})


@raises_aws_error
def create_model(
    name: str,
    *,
    image: str,
    model_data_url: str,
    role_arn: str,
    environment: dict[str, str],
    tags: dict[str, str],
) -> None:
    """Create the model; one that already exists under this (deterministic) name is kept."""
    with ok_if_exists():
        aws_client("sagemaker").create_model(
            ModelName=name,
            PrimaryContainer={"Image": image, "ModelDataUrl": model_data_url, "Environment": environment},
            ExecutionRoleArn=role_arn,
            # The container runs the user's model code: with network isolation it gets no
            # network and no AWS credentials, so it cannot read other users' model data
            # with the shared execution role (SageMaker still fetches its own model data).
            EnableNetworkIsolation=True,
            Tags=tag_list(tags),
        )


@raises_aws_error
def model_exists(name: str) -> bool:
    with ok_if_missing():
        aws_client("sagemaker").describe_model(ModelName=name)
        return True
    return False


@raises_aws_error
def delete_model(name: str) -> None:
    with ok_if_missing():
        aws_client("sagemaker").delete_model(ModelName=name)


@raises_aws_error
def create_endpoint_config(
    name: str,
    *,
    variant: dict[str, Any],
    tags: dict[str, str],
    shadow_variant: dict[str, Any] | None = None,
    data_capture: dict[str, Any] | None = None,
) -> None:
    """One production variant; with ``shadow_variant`` SageMaker copies requests to it
    (an endpoint with a shadow has exactly one of each), with ``data_capture`` it writes
    requests and answers to S3 (``DataCaptureConfig``)."""
    if endpoint_config_exists(name):
        return
    arguments: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": [variant], "Tags": tag_list(tags)}
    if shadow_variant is not None:
        arguments["ShadowProductionVariants"] = [shadow_variant]
    if data_capture is not None:
        arguments["DataCaptureConfig"] = data_capture
    with ok_if_exists():
        aws_client("sagemaker").create_endpoint_config(**arguments)


@raises_aws_error
def endpoint_config_exists(name: str) -> bool:
    with ok_if_missing():
        aws_client("sagemaker").describe_endpoint_config(EndpointConfigName=name)
        return True
    return False


@raises_aws_error
def delete_endpoint_config(name: str) -> None:
    with ok_if_missing():
        aws_client("sagemaker").delete_endpoint_config(EndpointConfigName=name)


@dataclass(frozen=True)
class EndpointState:
    name: str
    status: str
    config_name: str
    failure_reason: str
    arn: str


@raises_aws_error
def describe_endpoint(name: str) -> EndpointState | None:
    with ok_if_missing():
        data = aws_client("sagemaker").describe_endpoint(EndpointName=name)
        return EndpointState(
            name=name,
            status=str(data["EndpointStatus"]),
            config_name=str(data.get("EndpointConfigName", "")),
            failure_reason=str(data.get("FailureReason", "")),
            arn=str(data.get("EndpointArn", "")),
        )
    return None


@raises_aws_error
def create_endpoint(name: str, *, config_name: str, tags: dict[str, str]) -> None:
    """Create the endpoint unless it exists (a create retried after a crash must not fail)."""
    if describe_endpoint(name) is not None:
        return
    with ok_if_exists():
        aws_client("sagemaker").create_endpoint(EndpointName=name, EndpointConfigName=config_name, Tags=tag_list(tags))


@raises_aws_error
def update_endpoint(name: str, *, config_name: str, deployment_config: dict[str, Any] | None = None) -> None:
    """Switch the endpoint to a new config: SageMaker brings the new fleet up, then moves traffic."""
    arguments: dict[str, Any] = {"EndpointName": name, "EndpointConfigName": config_name}
    if deployment_config:
        arguments["DeploymentConfig"] = deployment_config
    aws_client("sagemaker").update_endpoint(**arguments)


@raises_aws_error
def delete_endpoint(name: str) -> None:
    with ok_if_missing():
        aws_client("sagemaker").delete_endpoint(EndpointName=name)


@raises_aws_error
def tags_of(arn: str) -> dict[str, str]:
    tags: list[Any] = unless_missing(lambda: aws_client("sagemaker").list_tags(ResourceArn=arn)["Tags"], [])
    return {tag["Key"]: tag["Value"] for tag in tags}


# Describe call, its name argument and the ARN it answers, per kind of named resource.
_DESCRIBE = {
    "model": ("describe_model", "ModelName", "ModelArn"),
    "endpoint-config": ("describe_endpoint_config", "EndpointConfigName", "EndpointConfigArn"),
    "endpoint": ("describe_endpoint", "EndpointName", "EndpointArn"),
}


@raises_aws_error
def tags_by_name(kind: str, name: str) -> dict[str, str] | None:
    """The tags of the model, endpoint config or endpoint (``kind``) called ``name``, or
    None when there is none."""
    operation, argument, arn_key = _DESCRIBE[kind]
    with ok_if_missing():
        arn = getattr(aws_client("sagemaker"), operation)(**{argument: name})[arn_key]
        return tags_of(str(arn))
    return None


@raises_aws_error
def _names(operation: str, key: str, name_key: str, arn_key: str, prefix: str) -> Iterator[tuple[str, str]]:
    paginator = aws_client("sagemaker").get_paginator(operation)
    for page in paginator.paginate(NameContains=prefix):
        for item in page[key]:
            if item[name_key].startswith(prefix):
                yield str(item[name_key]), str(item[arn_key])


def models(prefix: str) -> Iterator[tuple[str, str]]:
    """(name, ARN) of every model whose name starts with ``prefix``."""
    return _names("list_models", "Models", "ModelName", "ModelArn", prefix)


def endpoint_configs(prefix: str) -> Iterator[tuple[str, str]]:
    return _names("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", "EndpointConfigArn", prefix)


def endpoints(prefix: str) -> Iterator[tuple[str, str]]:
    return _names("list_endpoints", "Endpoints", "EndpointName", "EndpointArn", prefix)


@dataclass(frozen=True)
class Invocation:
    status: int
    body: bytes
    content_type: str
    custom_attributes: str


@raises_aws_error
def invoke_endpoint(
    name: str, *, body: bytes, content_type: str, accept: str, custom_attributes: str = ""
) -> Invocation:
    """One real-time prediction. A model error (the container answered 4xx/5xx) comes back
    as an Invocation with that status and the container's body, not as an exception."""
    arguments: dict[str, Any] = {"EndpointName": name, "Body": body, "ContentType": content_type, "Accept": accept}
    if custom_attributes:
        arguments["CustomAttributes"] = custom_attributes
    try:
        response = aws_client("sagemaker-runtime").invoke_endpoint(**arguments)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ModelError":
            raise
        return Invocation(
            status=int(error.response.get("OriginalStatusCode") or 500),
            body=str(error.response.get("OriginalMessage") or error.response["Error"].get("Message", "")).encode(),
            content_type="application/json",
            custom_attributes="",
        )
    return Invocation(
        status=200,
        body=response["Body"].read(),
        content_type=str(response.get("ContentType", "application/octet-stream")),
        custom_attributes=str(response.get("CustomAttributes", "")),
    )
