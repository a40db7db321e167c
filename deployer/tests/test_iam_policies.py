"""The IAM policies docs/iam/*.json documents (issue 12, finding 4): they parse, every
statement says Effect, Action and Resource, nothing mutating reaches every resource ("*")
or a resource whose ARN cannot carry rdeploy's names without a condition on the
installation's tag, ARNs name only this installation's resources, and the names the
SageMaker target gives its resources fall inside them (another installation's do not).

moto does not evaluate IAM, so none of this is checked against AWS's policy engine
(docs/sagemaker.md says so).
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from deployer.integrations.aws.tagging import INSTALLATION
from deployer.models import Deployment, Endpoint
from deployer.targets.sagemaker import names
from deployer.targets.sagemaker.options import rollback_alarms
from deployer.targets.sagemaker.public_api import _function_policy

POLICIES = Path(settings.BASE_DIR) / "docs" / "iam"
POLICY_FILES = sorted(POLICIES.glob("*.json"))
PLACEHOLDERS = {"REGION": "us-east-1", "ACCOUNT": "123456789012", "BUCKET": "models-bucket", "REPO": "team-runtime"}
OURS = "PREFIX-INSTALLATION"
READ_VERBS = ("Describe", "List", "Get", "BatchGet", "BatchCheck", "Filter")
# Not mutating although the verb says nothing: a prediction changes no resource.
READS = frozenset({"sagemaker:InvokeEndpoint", "apigateway:GET"})
TAG_KEYS = {f"aws:ResourceTag/{INSTALLATION}", f"aws:RequestTag/{INSTALLATION}"}

# Mutating statements allowed without a condition on the installation's tag, and why.
UNTAGGED_MUTATIONS = {
    ("sagemaker-execution-policy.json", "EndpointMetrics"): (
        "cloudwatch:PutMetricData has no resource-level permissions; the namespace condition keeps it to SageMaker's"
    ),
    ("deployer-policy.json", "AutoscalingServiceLinkedRole"): (
        "the one service-linked role Application Auto Scaling needs, named by AWS, created once per account"
    ),
}
# ARNs that cannot carry rdeploy's name prefix, and why they are narrow enough.
OTHER_ARNS = {
    "arn:aws:ecr:REGION:ACCOUNT:repository/REPO": "the one repository the operator names in RDEPLOY_ECR_REPOSITORY",
    "arn:aws:s3:::BUCKET": "s3:ListBucket is granted on the bucket, narrowed by the s3:prefix condition",
    "arn:aws:cloudwatch:REGION:ACCOUNT:alarm:*": "SageMaker reads the rollback alarms users name (read-only)",
}


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def is_read(action: str) -> bool:
    return action in READS or action.partition(":")[2].startswith(READ_VERBS)


def tag_conditioned(statement: dict[str, Any]) -> bool:
    equals = statement.get("Condition", {}).get("StringEquals", {})
    return any(equals.get(key) == "INSTALLATION" for key in TAG_KEYS)


def statements() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, statement) for path in POLICY_FILES for statement in load(path)["Statement"]]


def test_every_documented_policy_parses_and_every_statement_has_effect_action_and_resource() -> None:
    assert {path.name for path in POLICY_FILES} >= {
        "deployer-policy.json",
        "lambda-boundary-policy.json",
        "lambda-role-policy.json",
        "sagemaker-execution-policy.json",
        "codebuild-policy.json",
    }
    for path in POLICY_FILES:
        policy = load(path)
        assert policy["Version"] == "2012-10-17", path.name
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow", (path.name, statement)
            assert as_list(statement["Action"]), (path.name, statement)
            assert as_list(statement["Resource"]), (path.name, statement)
            assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition"}, (path.name, statement)


def test_nothing_mutating_reaches_every_resource_or_an_unnamed_one_without_the_installations_tag() -> None:
    for file, statement in statements():
        mutating = [action for action in as_list(statement["Action"]) if not is_read(action)]
        if not mutating or tag_conditioned(statement):
            continue
        for resource in as_list(statement["Resource"]):
            named_ours = OURS in resource
            exempt = (file, statement.get("Sid")) in UNTAGGED_MUTATIONS
            assert resource != "*" or exempt, f"{file} {statement.get('Sid')}: {mutating} on * without a tag condition"
            assert named_ours or exempt, (
                f"{file} {statement.get('Sid')}: {mutating} on {resource} without a tag condition"
            )


def test_arns_name_only_this_installations_resources_where_arns_allow() -> None:
    for file, statement in statements():
        for resource in as_list(statement["Resource"]):
            if resource == "*":
                continue
            _arn, _partition, service, region, account, rest = resource.split(":", 5)
            assert region in ("REGION", ""), resource
            assert account in ("ACCOUNT", "", "*"), resource
            if service == "apigateway":
                # REST APIs, keys and plans are addressed by ids API Gateway makes up.
                assert tag_conditioned(statement) or all(is_read(a) for a in as_list(statement["Action"])), resource
            elif service == "iam" and rest.startswith("role/aws-service-role/"):
                assert (file, statement.get("Sid")) in UNTAGGED_MUTATIONS, resource
            else:
                assert OURS in rest or resource in OTHER_ARNS, f"{file} {statement.get('Sid')}: {resource}"


def policy_patterns(file: str) -> dict[str, list[str]]:
    """{action: [resource patterns]} of one policy, placeholders filled with this installation's values."""
    text = (POLICIES / file).read_text()
    text = text.replace("PREFIX", str(settings.RDEPLOY_RESOURCE_PREFIX)).replace(
        "INSTALLATION", settings.INSTALLATION_ID
    )
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    patterns: dict[str, list[str]] = {}
    for statement in json.loads(text)["Statement"]:
        for action in as_list(statement["Action"]):
            patterns.setdefault(action, []).extend(as_list(statement["Resource"]))
    return patterns


def arns_rdeploy_touches() -> dict[str, str]:
    """{action: ARN} for one name of each kind the SageMaker target gives a resource."""
    endpoint = Endpoint(name="iris")
    deployment = Deployment(pk=42, endpoint=endpoint)
    region, account = PLACEHOLDERS["REGION"], PLACEHOLDERS["ACCOUNT"]
    alarm = rollback_alarms(endpoint, {})[0].name
    return {
        "sagemaker:CreateEndpoint": f"arn:aws:sagemaker:{region}:{account}:endpoint/{names.endpoint_name(endpoint)}",
        "sagemaker:CreateModel": f"arn:aws:sagemaker:{region}:{account}:model/{names.rollout_name(deployment)}",
        "sagemaker:DeleteEndpointConfig": (
            f"arn:aws:sagemaker:{region}:{account}:endpoint-config/{names.rollout_name(deployment)}"
        ),
        "lambda:CreateFunction": f"arn:aws:lambda:{region}:{account}:function:{names.function_name(endpoint)}",
        "iam:CreateRole": f"arn:aws:iam::{account}:role/{names.prefix()}/{names.role_name(endpoint)}",
        "logs:DeleteLogGroup": f"arn:aws:logs:{region}:{account}:log-group:{names.endpoint_log_group(endpoint)}",
        "logs:CreateLogGroup": f"arn:aws:logs:{region}:{account}:log-group:{names.function_log_group(endpoint)}",
        "cloudwatch:PutMetricAlarm": f"arn:aws:cloudwatch:{region}:{account}:alarm:{alarm}",
        "codebuild:StartBuild": (
            f"arn:aws:codebuild:{region}:{account}:project/{names.join_name(names.prefix(), 'image-builder')}"
        ),
        "s3:PutObject": f"arn:aws:s3:::{PLACEHOLDERS['BUCKET']}/{names.prefix()}/model-data/abc/model.tar.gz",
    }


def test_the_deployer_policy_covers_the_names_rdeploy_gives_and_no_other_installations() -> None:
    patterns = policy_patterns("deployer-policy.json")
    ours = arns_rdeploy_touches()
    for action, arn in ours.items():
        assert any(fnmatchcase(arn, pattern) for pattern in patterns[action]), (action, arn)
    with override_settings(INSTALLATION_ID=f"{settings.INSTALLATION_ID}x"):
        theirs = arns_rdeploy_touches()
    for action, arn in theirs.items():
        assert not any(fnmatchcase(arn, pattern) for pattern in patterns[action]), (action, arn)


@pytest.mark.parametrize("file", ["lambda-role-policy.json"])
def test_the_documented_per_endpoint_lambda_role_is_the_one_rdeploy_creates(file: str) -> None:
    name = f"{names.prefix()}-iris"
    documented = (POLICIES / file).read_text().replace("REGION", "us-east-1").replace("PREFIX-INSTALLATION-NAME", name)
    assert json.loads(documented) == _function_policy(name, f"/aws/lambda/{name}", "us-east-1")
