"""IAM: the per-endpoint execution role of the public API's Lambda function."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from deployer.integrations.aws.client import (
    aws_client,
    is_already_exists,
    ok_if_missing,
    raises_aws_error,
    tag_list,
    unless_missing,
)

LAMBDA_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
INLINE_POLICY_NAME = "invoke-one-endpoint"


@raises_aws_error
def ensure_role(
    name: str,
    *,
    path: str,
    trust: dict[str, Any],
    policy: dict[str, Any],
    tags: dict[str, str],
    boundary: str | None = None,
) -> str:
    """Create the role with its one inline policy (re-put on every call); returns its ARN.

    ``boundary``: a permissions boundary policy ARN capping what the role can ever do.
    """
    client = aws_client("iam")
    arguments: dict[str, Any] = {
        "RoleName": name,
        "Path": path,
        "AssumeRolePolicyDocument": json.dumps(trust),
        "Tags": tag_list(tags),
    }
    if boundary:
        arguments["PermissionsBoundary"] = boundary
    try:
        arn = client.create_role(**arguments)["Role"]["Arn"]
    except ClientError as error:
        if not is_already_exists(error):
            raise
        arn = client.get_role(RoleName=name)["Role"]["Arn"]
    client.put_role_policy(RoleName=name, PolicyName=INLINE_POLICY_NAME, PolicyDocument=json.dumps(policy))
    return str(arn)


@raises_aws_error
def delete_role(name: str) -> None:
    """Delete the role and its inline policies; a missing role counts as deleted."""
    client = aws_client("iam")
    with ok_if_missing():
        for policy_name in client.list_role_policies(RoleName=name)["PolicyNames"]:
            client.delete_role_policy(RoleName=name, PolicyName=policy_name)
        client.delete_role(RoleName=name)


@raises_aws_error
def roles(path: str) -> list[tuple[str, str]]:
    """(name, ARN) of every role under ``path``."""
    found: list[tuple[str, str]] = []
    for page in aws_client("iam").get_paginator("list_roles").paginate(PathPrefix=path):
        found.extend((str(role["RoleName"]), str(role["Arn"])) for role in page["Roles"])
    return found


@raises_aws_error
def role_tags(name: str) -> dict[str, str] | None:
    """The role's tags, or None when there is no such role."""
    client = aws_client("iam")
    with ok_if_missing():
        tags = client.list_role_tags(RoleName=name)["Tags"]
        return {tag["Key"]: tag["Value"] for tag in tags}
    return None


@raises_aws_error
def tags_of(name: str) -> dict[str, str]:
    tags: list[Any] = unless_missing(lambda: aws_client("iam").list_role_tags(RoleName=name)["Tags"], [])
    return {tag["Key"]: tag["Value"] for tag in tags}
