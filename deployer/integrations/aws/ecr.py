"""ECR: one runtime repository per installation; images tagged by build-context hash."""

from __future__ import annotations

import base64
from typing import Any

from botocore.exceptions import ClientError

from deployer.integrations.aws.client import (
    aws_client,
    is_already_exists,
    ok_if_missing,
    raises_aws_error,
    tag_list,
)


@raises_aws_error
def ensure_repository(name: str, *, tags: dict[str, str]) -> str:
    """The repository's URI, creating it (immutable tags, scan on push) when missing."""
    ecr = aws_client("ecr")
    try:
        repository = ecr.create_repository(
            repositoryName=name,
            imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
            tags=tag_list(tags),
        )["repository"]
    except ClientError as error:
        if not is_already_exists(error):
            raise
        repository = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    return str(repository["repositoryUri"])


@raises_aws_error
def repository_tags(name: str) -> dict[str, str] | None:
    """The repository's tags, or None when there is no such repository."""
    client = aws_client("ecr")
    with ok_if_missing():
        repository = client.describe_repositories(repositoryNames=[name])["repositories"][0]
        tags = client.list_tags_for_resource(resourceArn=repository["repositoryArn"])["tags"]
        return {tag["Key"]: tag["Value"] for tag in tags}
    return None


@raises_aws_error
def image_exists(repository: str, tag: str) -> bool:
    with ok_if_missing():
        details = aws_client("ecr").describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
        return bool(details["imageDetails"])
    return False


@raises_aws_error
def image_size(repository: str, tag: str) -> int | None:
    """The image's size as ECR bills its storage (``imageSizeInBytes``); None when missing."""
    with ok_if_missing():
        details = aws_client("ecr").describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
        sizes = [image.get("imageSizeInBytes") for image in details["imageDetails"]]
        return int(sizes[0]) if sizes and isinstance(sizes[0], int) else None
    return None


@raises_aws_error
def image_tags(repository: str) -> list[str]:
    """Every tag in the repository (empty when the repository does not exist)."""
    paginator = aws_client("ecr").get_paginator("list_images")
    tags: list[str] = []
    with ok_if_missing():
        for page in paginator.paginate(repositoryName=repository, filter={"tagStatus": "TAGGED"}):
            tags.extend(image["imageTag"] for image in page["imageIds"] if "imageTag" in image)
        return tags
    return []


@raises_aws_error
def delete_image(repository: str, tag: str) -> None:
    """Idempotent: a missing image or repository counts as deleted."""
    with ok_if_missing():
        aws_client("ecr").batch_delete_image(repositoryName=repository, imageIds=[{"imageTag": tag}])


@raises_aws_error
def docker_login() -> tuple[str, str, str]:
    """(user, password, registry URL) for ``docker login`` when the worker builds locally."""
    data: dict[str, Any] = aws_client("ecr").get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    return user, password, str(data["proxyEndpoint"])
