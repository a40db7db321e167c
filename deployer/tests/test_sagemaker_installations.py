"""Two rdeploy installations in one AWS account (issue 12, finding 3): their names differ,
neither adopts, updates or deletes what the other tagged (nor an untagged resource where
"already exists" would have adopted it), and neither's garbage collection sees the other's.

Against moto (server mode). Installation B is this session's database emptied of A's rows
(each installation has its own) with ``INSTALLATION_ID`` and the ECR repository overridden.
Resources of "another installation" are made directly with boto3, as that installation would.
moto 5.2 lists tags for every service checked here (SageMaker, Lambda, IAM, API Gateway,
CloudWatch, CloudWatch Logs, S3, ECR); it has no tag listing for Application Auto Scaling,
so a scalable target is judged by its endpoint's tags.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings

from deployer.integrations.aws import tagging
from deployer.integrations.aws.client import aws_client, tag_list
from deployer.models import Deployment, DeploymentStep, Endpoint, ExternalResource, LogLine
from deployer.services.cloud_gc import cloud_orphans
from deployer.targets import get_target
from deployer.targets.sagemaker.names import (
    api_name,
    endpoint_name,
    function_name,
    prefix,
    role_name,
    rollout_name,
)
from deployer.targets.sagemaker.ownership import ForeignResource
from deployer.tests.sagemaker_support import create_public, drive, latest, stub_model, tagged
from testsupport.moto import EndpointUpdates, MotoServer

pytestmark = pytest.mark.django_db

OTHER = "other"
OTHER_TAGS = {tagging.INSTALLATION: OTHER, tagging.ENDPOINT: "iris-sm"}


@contextmanager
def installation_b() -> Iterator[None]:
    """Another installation: its own (empty) database, id and ECR repository."""
    ExternalResource.objects.all().delete()
    Endpoint.objects.all().delete()
    with override_settings(INSTALLATION_ID="instb", RDEPLOY_ECR_REPOSITORY="rdeploy-instb-runtime"):
        yield


def cloud_names() -> set[str]:
    sagemaker = aws_client("sagemaker")
    return {
        *(e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]),
        *(c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]),
        *(m["ModelName"] for m in sagemaker.list_models()["Models"]),
        *(f["FunctionName"] for f in aws_client("lambda").list_functions()["Functions"]),
        *(a["name"] for a in aws_client("apigateway").get_rest_apis()["items"]),
    }


def test_names_carry_the_installation_and_stay_within_aws_limits() -> None:
    endpoint = Endpoint(name="x" * 63)
    deployment = Deployment(pk=123456, endpoint=endpoint)
    with override_settings(INSTALLATION_ID="a" * 32):
        long_names = [endpoint_name(endpoint), rollout_name(deployment), api_name(endpoint)]
        lambda_names = [function_name(endpoint), role_name(endpoint)]
        again = [endpoint_name(endpoint), rollout_name(deployment), function_name(endpoint)]
    assert all(len(name) <= 63 for name in long_names)
    assert all(len(name) <= 64 for name in lambda_names)
    assert all(name.startswith(f"rdeploy-{'a' * 32}-") for name in long_names + lambda_names)
    # Deterministic (a rerun finds what it made), and another installation's differ.
    assert again == [long_names[0], long_names[1], lambda_names[0]]
    with override_settings(INSTALLATION_ID="b"):
        assert endpoint_name(Endpoint(name="iris")) == "rdeploy-b-iris"
        assert rollout_name(Deployment(pk=7, endpoint=Endpoint(name="iris"))) == "rdeploy-b-iris-d7"


def test_two_installations_with_the_same_endpoint_name_do_not_collide(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
    a_names = cloud_names()
    a_endpoint = endpoint_name(Endpoint.objects.get(name="iris-sm"))
    a_config = aws_client("sagemaker").describe_endpoint(EndpointName=a_endpoint)["EndpointConfigName"]
    a_tagged = sorted((r.kind, r.identifier) for r in tagged())
    a_prefix = prefix()

    with installation_b():
        create_public(owner, api_client_for)
        deployment = drive(latest("iris-sm"))
        assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
        b_endpoint = endpoint_name(Endpoint.objects.get(name="iris-sm"))
        assert b_endpoint != a_endpoint
        assert cloud_names() > a_names
        # A's resources are orphans as far as B's database knows, yet B's GC sees none of them.
        assert cloud_orphans() == []

        assert api_client_for(owner).delete("/api/v1/endpoints/iris-sm/").status_code == 202
        assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
        assert not any(name.startswith(prefix()) for name in cloud_names())

    assert cloud_names() == a_names
    assert aws_client("sagemaker").describe_endpoint(EndpointName=a_endpoint)["EndpointConfigName"] == a_config
    assert sorted((r.kind, r.identifier) for r in tagged()) == a_tagged
    assert all(r.identifier.startswith((a_prefix, "s3://")) or "/" in r.identifier for r in tagged())


def plant_endpoint(name: str, tags: dict[str, str]) -> None:
    sagemaker = aws_client("sagemaker")
    sagemaker.create_model(
        ModelName="theirs-model",
        ExecutionRoleArn=settings.RDEPLOY_SAGEMAKER_ROLE_ARN,
        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/theirs:1"},
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName="theirs-config",
        ProductionVariants=[
            {
                "VariantName": "main",
                "ModelName": "theirs-model",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    )
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName="theirs-config", Tags=tag_list(tags))


def plant_model(name: str, tags: dict[str, str]) -> None:
    aws_client("sagemaker").create_model(
        ModelName=name,
        ExecutionRoleArn=settings.RDEPLOY_SAGEMAKER_ROLE_ARN,
        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/theirs:1"},
        Tags=tag_list(tags),
    )


def plant_function(name: str, tags: dict[str, str]) -> None:
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return 'theirs'\n")
    aws_client("lambda").create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=str(settings.RDEPLOY_SAGEMAKER_ROLE_ARN),
        Handler="handler.handler",
        Code={"ZipFile": code.getvalue()},
        Environment={"Variables": {"THEIRS": "1"}},
        Tags=tags,
    )


def plant_api_key(name: str, tags: dict[str, str]) -> None:
    aws_client("apigateway").create_api_key(name=name, enabled=True, value="theirs-usage-key-0123456789", tags=tags)


def plant_rest_api(name: str, tags: dict[str, str]) -> None:
    aws_client("apigateway").create_rest_api(name=name, tags=tags)


def plant_role(name: str, tags: dict[str, str]) -> None:
    aws_client("iam").create_role(
        RoleName=name, Path=f"/{prefix()}/", AssumeRolePolicyDocument="{}", Tags=tag_list(tags)
    )


def planted_is_untouched(kind: str, name: str, tags: dict[str, str]) -> None:
    sagemaker = aws_client("sagemaker")
    if kind == "endpoint":
        described = sagemaker.describe_endpoint(EndpointName=name)
        assert described["EndpointConfigName"] == "theirs-config"
        arn = described["EndpointArn"]
    elif kind == "model":
        arn = sagemaker.describe_model(ModelName=name)["ModelArn"]
    elif kind == "function":
        function = aws_client("lambda").get_function(FunctionName=name)
        assert function["Configuration"]["Environment"]["Variables"] == {"THEIRS": "1"}
        assert aws_client("lambda").list_tags(Resource=function["Configuration"]["FunctionArn"])["Tags"] == tags
        return
    elif kind == "rest_api":
        apis = [api for api in aws_client("apigateway").get_rest_apis()["items"] if api["name"] == name]
        assert [api.get("tags") for api in apis] == [tags]
        assert [r["path"] for r in aws_client("apigateway").get_resources(restApiId=apis[0]["id"])["items"]] == ["/"]
        return
    elif kind == "role":
        assert aws_client("iam").list_role_policies(RoleName=name)["PolicyNames"] == []
        assert {t["Key"]: t["Value"] for t in aws_client("iam").list_role_tags(RoleName=name)["Tags"]} == tags
        return
    else:
        keys = aws_client("apigateway").get_api_keys(nameQuery=name, includeValues=True)["items"]
        assert [(key["value"], key.get("tags") or {}) for key in keys] == [("theirs-usage-key-0123456789", tags)]
        return
    assert {t["Key"]: t["Value"] for t in sagemaker.list_tags(ResourceArn=arn)["Tags"]} == tags


PLANTS = {
    "endpoint": plant_endpoint,
    "model": plant_model,
    "function": plant_function,
    "api_key": plant_api_key,
    "rest_api": plant_rest_api,
    "role": plant_role,
}
NAMES = {
    "endpoint": lambda d: endpoint_name(d.endpoint),
    "model": rollout_name,
    "function": lambda d: function_name(d.endpoint),
    "api_key": lambda d: api_name(d.endpoint),
    "rest_api": lambda d: api_name(d.endpoint),
    "role": lambda d: role_name(d.endpoint),
}
REFUSED_AT = {"endpoint": "deploy_endpoint", "model": "create_model", "rest_api": "public_api"}


@pytest.mark.parametrize(
    ("kind", "tags", "reason"),
    [
        ("endpoint", OTHER_TAGS, "belongs to rdeploy installation 'other'"),
        ("endpoint", {}, "carries no rdeploy:installation tag"),
        ("model", OTHER_TAGS, "belongs to rdeploy installation 'other'"),
        ("model", {"team": "data"}, "carries no rdeploy:installation tag"),
        ("function", OTHER_TAGS, "belongs to rdeploy installation 'other'"),
        ("api_key", OTHER_TAGS, "belongs to rdeploy installation 'other'"),
        ("rest_api", OTHER_TAGS, "belongs to rdeploy installation 'other'"),
        ("role", OTHER_TAGS, "belongs to rdeploy installation 'other'"),
    ],
)
def test_creating_refuses_to_adopt_a_resource_another_installation_or_nobody_tagged(
    aws: MotoServer, owner: User, api_client_for: Any, kind: str, tags: dict[str, str], reason: str
) -> None:
    create_public(owner, api_client_for)
    deployment = latest("iris-sm")
    name = NAMES[kind](deployment)
    PLANTS[kind](name, tags)

    deployment = drive(deployment)

    assert deployment.status == Deployment.Status.FAILED
    step = deployment.steps.get(name=REFUSED_AT.get(kind, "public_function"))
    assert step.status == DeploymentStep.Status.FAILED
    assert name in step.message
    assert reason in step.message
    assert f"this installation is {settings.INSTALLATION_ID!r}" in step.message
    assert Endpoint.objects.get(name="iris-sm").status == Endpoint.Status.FAILED
    planted_is_untouched(kind, name, tags)
    # The failed rollout's own resources are gone; the other's were never recorded.
    assert tagged() == []
    assert not ExternalResource.objects.live().filter(identifier=name).exists()


def retag(kind: str, name: str) -> None:
    """What a collision looks like from this side: our name now carries another's tag."""
    if kind == "endpoint":
        client = aws_client("sagemaker")
        arn = client.describe_endpoint(EndpointName=name)["EndpointArn"]
        client.add_tags(ResourceArn=arn, Tags=tag_list({tagging.INSTALLATION: OTHER}))
    else:
        client = aws_client("lambda")
        arn = client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
        client.tag_resource(Resource=arn, Tags={tagging.INSTALLATION: OTHER})


def test_an_update_refuses_an_endpoint_now_tagged_by_another_installation(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    first = drive(latest("iris-sm"))
    name = endpoint_name(first.endpoint)
    retag("endpoint", name)
    second = stub_model(owner, content=b"model-2")

    response = api_client_for(owner).post("/api/v1/endpoints/iris-sm/deployments", {"model": second.pk}, format="json")
    assert response.status_code == 202, response.content
    with EndpointUpdates(aws_client("sagemaker")) as updates:
        update = drive(latest("iris-sm"))

    assert update.status == Deployment.Status.FAILED
    assert "belongs to rdeploy installation 'other'" in update.error
    assert updates.calls == []
    assert aws_client("sagemaker").describe_endpoint(EndpointName=name)["EndpointConfigName"] == rollout_name(first)
    # The update's own model and config went with the failed rollout.
    models = {m["ModelName"] for m in aws_client("sagemaker").list_models()["Models"]}
    assert models == {rollout_name(first)}


def test_deleting_leaves_resources_another_installation_tagged_and_says_why(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    deployment = drive(latest("iris-sm"))
    endpoint, function = endpoint_name(deployment.endpoint), function_name(deployment.endpoint)
    retag("endpoint", endpoint)
    retag("function", function)

    assert api_client_for(owner).delete("/api/v1/endpoints/iris-sm/").status_code == 202
    deletion = drive(latest("iris-sm"))

    assert deletion.status == Deployment.Status.SUCCEEDED, deletion.error
    assert aws_client("sagemaker").describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"
    assert aws_client("lambda").get_function(FunctionName=function)
    warnings = list(
        LogLine.objects.filter(deployment=deletion, level=LogLine.Level.WARNING).values_list("message", flat=True)
    )
    assert any(endpoint in w and "belongs to rdeploy installation 'other'" in w for w in warnings)
    assert any(function in w and "belongs to rdeploy installation 'other'" in w for w in warnings)
    # Everything still ours is gone (the image stays for rdeploy_gc), and no record claims the other's.
    assert tagged() == []
    assert list(ExternalResource.objects.live().values_list("kind", flat=True)) == [ExternalResource.Kind.ECR_IMAGE]


def test_gc_never_takes_in_an_installation_whose_id_starts_with_this_ones(aws: MotoServer) -> None:
    # Installation "<ours>x": its untagged leftovers go by name, and its names start with ours.
    theirs = f"{prefix()}x-iris"
    aws_client("application-autoscaling").register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=f"endpoint/{theirs}/variant/main",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        MinCapacity=1,
        MaxCapacity=2,
    )
    aws_client("logs").create_log_group(logGroupName=f"/aws/sagemaker/Endpoints/{theirs}")

    assert cloud_orphans() == []


def test_a_key_rotation_leaves_a_function_now_tagged_by_another_installation_alone(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    endpoint = drive(latest("iris-sm")).endpoint
    function = function_name(endpoint)
    retag("function", function)
    before = aws_client("lambda").get_function_configuration(FunctionName=function)["Environment"]
    endpoint.api_key_hash = "0" * 64

    with pytest.raises(ForeignResource, match="belongs to rdeploy installation 'other'"):
        get_target("sagemaker").push_api_key(endpoint)

    assert aws_client("lambda").get_function_configuration(FunctionName=function)["Environment"] == before
