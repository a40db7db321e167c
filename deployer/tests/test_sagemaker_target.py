"""The SageMaker target end to end against moto (server mode), through the REST API.

The pipeline runs in this process (``drive``), polls made immediate. moto gaps and what
stands in for them (docs/sagemaker.md lists these):
- CodeBuild runs nothing: ``push_image`` does what the buildspec's ``docker push`` does.
- ``update_endpoint`` is not implemented: the update test puts a Stubber on that one
  call (``SingleCallStubber``), then plays SageMaker finishing the update with moto's
  overwriting ``create_endpoint``.
- Endpoints are InService at once: the failure test puts a Stubber on
  ``describe_endpoint`` only, answering ``Failed`` with a ``FailureReason``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command

from deployer.build_context import PUBLIC_BASE_IMAGE, render_build_context
from deployer.integrations.aws import codebuild, ecr, s3, tagging
from deployer.integrations.aws.client import aws_client
from deployer.model_files import model_version_directory_digest
from deployer.models import Deployment, DeploymentStep, Endpoint, ExternalResource, LogLine
from deployer.services.cloud_gc import cloud_orphans, cloud_orphans_delete
from deployer.services.pipeline import deployment_advance
from deployer.targets import get_target
from deployer.targets.base import PermanentStepError, TransientStepError
from deployer.targets.sagemaker.image import image_build_context
from deployer.targets.sagemaker.names import endpoint_name, prefix, rollout_name
from deployer.tests.sagemaker_support import (
    builds_started,
    create_public,
    drive,
    latest,
    named,
    push_image,
    stub_model,
)
from testsupport.moto import MotoServer, SingleCallStubber

pytestmark = pytest.mark.django_db


def endpoint_resources(name: str) -> list[tagging.CloudResource]:
    """Every cloud resource, across services, tagged with this endpoint."""
    return [
        resource
        for resource in tagging.inventory(
            installation=settings.INSTALLATION_ID,
            prefix=prefix(),
            bucket=settings.RDEPLOY_S3_BUCKET,
            repository=settings.RDEPLOY_ECR_REPOSITORY,
        )
        if resource.endpoint == name or resource.identifier.startswith(named(name))
    ]


def test_a_public_sagemaker_endpoint_goes_live_with_every_resource_tagged(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    body = create_public(owner, api_client_for, autoscaling={"min": 1, "max": 3, "target_invocations": 50})

    deployment = drive(latest("iris-sm"))

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    endpoint = Endpoint.objects.get(name="iris-sm")
    assert endpoint.status == Endpoint.Status.LIVE
    assert endpoint.runtime["endpoint_name"] == named("iris-sm")
    assert endpoint.public_url.endswith(".execute-api.us-east-1.amazonaws.com/v1/invocations")
    kinds = {resource.kind for resource in endpoint_resources("iris-sm")}
    assert kinds >= {
        ExternalResource.Kind.SAGEMAKER_ENDPOINT,
        ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG,
        ExternalResource.Kind.SAGEMAKER_MODEL,
        ExternalResource.Kind.LAMBDA_FUNCTION,
        ExternalResource.Kind.IAM_ROLE,
        ExternalResource.Kind.APIGATEWAY_REST_API,
        ExternalResource.Kind.APIGATEWAY_API_KEY,
        ExternalResource.Kind.APIGATEWAY_USAGE_PLAN,
        ExternalResource.Kind.MODEL_DATA,
        ExternalResource.Kind.AUTOSCALING_TARGET,
    }
    for resource in endpoint_resources("iris-sm"):
        if resource.kind != ExternalResource.Kind.AUTOSCALING_TARGET:
            assert resource.tags[tagging.INSTALLATION] == settings.INSTALLATION_ID
            assert resource.tags[tagging.ENDPOINT] == "iris-sm"
            assert resource.tags[tagging.DEPLOYMENT] == str(deployment.pk)
    # The authorizer accepts exactly the key the API returned once.
    function = aws_client("lambda").get_function_configuration(FunctionName=named("iris-sm"))
    assert function["Environment"]["Variables"]["RDEPLOY_API_KEY_SHA256"] == endpoint.api_key_hash
    assert body["api_key"].startswith(endpoint.api_key_prefix)
    # The function may invoke only this endpoint, and only this API may invoke the function.
    policy = aws_client("iam").get_role_policy(RoleName=named("iris-sm-invoke"), PolicyName="invoke-one-endpoint")
    invoke = policy["PolicyDocument"]["Statement"][0]
    assert (invoke["Action"], invoke["Resource"]) == (
        "sagemaker:InvokeEndpoint",
        f"arn:aws:sagemaker:us-east-1:*:endpoint/{named('iris-sm')}",
    )
    api_id = aws_client("apigateway").get_rest_apis()["items"][0]["id"]
    statements = json.loads(aws_client("lambda").get_policy(FunctionName=named("iris-sm"))["Policy"])["Statement"]
    sources = sorted(s["Condition"]["ArnLike"]["AWS:SourceArn"] for s in statements)
    assert all(source.startswith(f"arn:aws:execute-api:us-east-1:123456789012:{api_id}/") for source in sources)
    plan = aws_client("apigateway").get_usage_plans()["items"][0]
    assert plan["throttle"] == {"rateLimit": 10.0, "burstLimit": 20}
    assert plan["quota"]["limit"] == 100_000


def test_the_invocations_route_returns_what_the_sagemaker_endpoint_returns(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    drive(latest("iris-sm"))
    aws.queue_endpoint_results({"Body": '["setosa"]', "ContentType": "application/json", "CustomAttributes": "x=1"})

    response = api_client_for(owner).generic(
        "POST",
        "/api/v1/endpoints/iris-sm/invocations",
        b'[{"Sepal.Length": 5.1}]',
        content_type="application/json",
        HTTP_ACCEPT="application/json",
    )

    assert response.status_code == 200
    assert json.loads(response.content) == ["setosa"]
    assert response["Content-Type"] == "application/json"


def test_a_second_model_version_with_the_same_packages_starts_no_build(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for, rollback_alarms=["iris-sm-5xx"])
    first = drive(latest("iris-sm"))
    assert builds_started() == 1
    image_bytes = 734_003_200
    push_image(first.resources[ExternalResource.Kind.ECR_IMAGE], size=image_bytes)
    second_model = stub_model(owner, content=b"model-2")

    response = api_client_for(owner).post(
        "/api/v1/endpoints/iris-sm/deployments", {"model": second_model.pk}, format="json"
    )
    assert response.status_code == 202
    update = latest("iris-sm")
    with SingleCallStubber(aws_client("sagemaker"), "UpdateEndpoint") as stub:
        stub.add_response(
            "update_endpoint",
            {"EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{named('iris-sm')}"},
            {
                "EndpointName": named("iris-sm"),
                "EndpointConfigName": rollout_name(update),
                "DeploymentConfig": {
                    "BlueGreenUpdatePolicy": {
                        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                        "TerminationWaitInSeconds": 300,
                    },
                    "AutoRollbackConfiguration": {
                        "Alarms": [
                            {"AlarmName": named("iris-sm-5xx")},
                            {"AlarmName": named("iris-sm-latency")},
                            {"AlarmName": "iris-sm-5xx"},
                        ]
                    },
                },
            },
        )
        advance_until_done(update, "deploy_endpoint")
        stub.assert_no_pending_responses()
    # SageMaker finishing the update (moto's duplicate create overwrites the endpoint).
    aws_client("sagemaker").create_endpoint(EndpointName=named("iris-sm"), EndpointConfigName=rollout_name(update))
    update = drive(update)

    assert update.status == Deployment.Status.SUCCEEDED, update.error
    assert builds_started() == 1
    assert update.steps.get(name="build_image").status == DeploymentStep.Status.SKIPPED
    assert update.resources[ExternalResource.Kind.ECR_IMAGE] == first.resources[ExternalResource.Kind.ECR_IMAGE]
    # The reused image's size, as ECR reports it, is what the cost estimate counts for storage.
    image = ExternalResource.objects.get(kind=ExternalResource.Kind.ECR_IMAGE)
    assert image.details["size_bytes"] == image_bytes
    # The update made a new endpoint config and retired the first rollout's model and config.
    configs = {c["EndpointConfigName"] for c in aws_client("sagemaker").list_endpoint_configs()["EndpointConfigs"]}
    assert configs == {rollout_name(update)}
    models = {m["ModelName"] for m in aws_client("sagemaker").list_models()["Models"]}
    assert models == {rollout_name(update)}
    # The rollback alarms SageMaker watched exist, on the endpoint's variant, tagged.
    alarms = {alarm["AlarmName"]: alarm for alarm in aws_client("cloudwatch").describe_alarms()["MetricAlarms"]}
    assert set(alarms) == {named("iris-sm-5xx"), named("iris-sm-latency")}
    dimensions = [{"Name": "EndpointName", "Value": named("iris-sm")}, {"Name": "VariantName", "Value": "main"}]
    errors, latency = alarms[named("iris-sm-5xx")], alarms[named("iris-sm-latency")]
    assert (errors["Namespace"], errors["MetricName"], errors["Statistic"]) == (
        "AWS/SageMaker",
        "Invocation5XXErrors",
        "Sum",
    )
    assert (errors["Threshold"], errors["Period"], errors["EvaluationPeriods"]) == (5.0, 60, 1)
    assert (latency["MetricName"], latency["Statistic"], latency["Threshold"], latency["EvaluationPeriods"]) == (
        "ModelLatency",
        "Average",
        2_000_000.0,
        2,
    )
    assert errors["Dimensions"] == dimensions
    assert latency["Dimensions"] == dimensions
    for alarm in alarms.values():
        tags = aws_client("cloudwatch").list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
        assert {"Key": tagging.DEPLOYMENT, "Value": str(update.pk)} in tags
        assert {"Key": tagging.ENDPOINT, "Value": "iris-sm"} in tags
    assert set(
        ExternalResource.objects.filter(
            kind=ExternalResource.Kind.CLOUDWATCH_ALARM, deleted_at__isnull=True
        ).values_list("identifier", flat=True)
    ) == set(alarms)


def advance_until_done(deployment: Deployment, step_name: str) -> None:
    for _ in range(100):
        DeploymentStep.objects.filter(deployment=deployment).update(next_check_at=None)
        Deployment.objects.filter(pk=deployment.pk).update(lease_until=None)
        deployment_advance(deployment_id=deployment.pk)
        step = deployment.steps.get(name=step_name)
        if step.status == DeploymentStep.Status.FAILED:
            raise AssertionError(step.message)
        if step.status in (DeploymentStep.Status.SUCCEEDED, DeploymentStep.Status.SKIPPED):
            return
    raise AssertionError(f"{step_name} never finished")


def test_deleting_leaves_no_tagged_resource_in_any_service(aws: MotoServer, owner: User, api_client_for: Any) -> None:
    create_public(owner, api_client_for, autoscaling={"min": 1, "max": 2})
    drive(latest("iris-sm"))
    assert endpoint_resources("iris-sm")

    response = api_client_for(owner).delete("/api/v1/endpoints/iris-sm/")
    assert response.status_code == 202
    deletion = drive(latest("iris-sm"))

    assert deletion.status == Deployment.Status.SUCCEEDED, deletion.error
    assert endpoint_resources("iris-sm") == []
    assert aws_client("sagemaker").list_endpoints()["Endpoints"] == []
    assert aws_client("lambda").list_functions()["Functions"] == []
    assert aws_client("apigateway").get_rest_apis()["items"] == []
    assert aws_client("apigateway").get_api_keys()["items"] == []
    assert (
        not ExternalResource.objects.filter(deleted_at__isnull=True)
        .exclude(kind=ExternalResource.Kind.ECR_IMAGE)
        .exists()
    )


def test_a_failed_endpoint_shows_sagemakers_reason_and_its_log_lines(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    model = stub_model(owner)
    response = api_client_for(owner).post(
        "/api/v1/endpoints/", {"name": "iris-bad", "model": model.pk, "target": "sagemaker"}, format="json"
    )
    assert response.status_code == 202
    deployment = latest("iris-bad")
    group = f"/aws/sagemaker/Endpoints/{named('iris-bad')}"
    cloudwatch = aws_client("logs")
    cloudwatch.create_log_group(logGroupName=group)
    cloudwatch.create_log_stream(logGroupName=group, logStreamName="main/i-0abc")
    cloudwatch.put_log_events(
        logGroupName=group,
        logStreamName="main/i-0abc",
        logEvents=[
            {
                "timestamp": int(time.time() * 1000),
                "message": "Error in loadNamespace(x): there is no package called 'ranger'",
            }
        ],
    )
    failed = {
        "EndpointName": named("iris-bad"),
        "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{named('iris-bad')}",
        "EndpointConfigName": rollout_name(deployment),
        "EndpointStatus": "Failed",
        "FailureReason": "The primary container for production variant main did not pass the ping health check.",
        "CreationTime": 0,
        "LastModifiedTime": 0,
    }
    with SingleCallStubber(aws_client("sagemaker"), "DescribeEndpoint") as stub:
        # The existence checks before creating (whose it is, whether to create or update,
        # and create_endpoint's own) find nothing, then the endpoint fails.
        for _ in range(3):
            stub.add_client_error(
                "describe_endpoint", "ValidationException", f"Could not find endpoint '{named('iris-bad')}'."
            )
        stub.add_response("describe_endpoint", failed)
        advance_until_done(deployment, "deploy_endpoint")
    deployment = drive(deployment)

    assert deployment.status == Deployment.Status.FAILED
    step = deployment.steps.get(name="wait_in_service")
    assert "did not pass the ping health check" in step.message
    assert "there is no package called 'ranger'" in step.message
    endpoint = Endpoint.objects.get(name="iris-bad")
    assert endpoint.status == Endpoint.Status.FAILED
    assert "ping health check" in endpoint.error
    # The failed first rollout took everything it created with it.
    assert aws_client("sagemaker").list_models()["Models"] == []
    assert aws_client("sagemaker").list_endpoints()["Endpoints"] == []


def test_a_missing_setting_fails_the_first_step_naming_it(
    aws: MotoServer, owner: User, api_client_for: Any, settings: Any
) -> None:
    settings.RDEPLOY_S3_BUCKET = None
    model = stub_model(owner)
    api_client_for(owner).post(
        "/api/v1/endpoints/", {"name": "iris-conf", "model": model.pk, "target": "sagemaker"}, format="json"
    )

    deployment = drive(latest("iris-conf"))

    assert deployment.status == Deployment.Status.FAILED
    step = deployment.steps.get(name="upload_model_data")
    assert step.status == DeploymentStep.Status.FAILED
    assert "RDEPLOY_S3_BUCKET" in step.message


def test_every_step_run_twice_creates_no_duplicate_and_teardown_leaves_nothing(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    """A worker killed after a step's work but before its outcome was saved reruns the step."""
    create_public(owner, api_client_for, autoscaling={"min": 1, "max": 2})
    deployment = latest("iris-sm")
    target = get_target("sagemaker")
    from deployer.services.pipeline import serving_deployment
    from deployer.targets.base import StepContext

    for step in deployment.steps.order_by("position"):
        for _ in range(2):
            step.refresh_from_db()
            deployment.refresh_from_db()
            ctx = StepContext(deployment=deployment, step=step, previous=serving_deployment(deployment.endpoint))
            target.run_step(step.name, ctx)
        DeploymentStep.objects.filter(pk=step.pk).update(status=DeploymentStep.Status.SUCCEEDED)
    deployment = drive(deployment)
    assert deployment.status == Deployment.Status.SUCCEEDED

    sagemaker = aws_client("sagemaker")
    assert len(sagemaker.list_models()["Models"]) == 1
    assert len(sagemaker.list_endpoint_configs()["EndpointConfigs"]) == 1
    assert len(sagemaker.list_endpoints()["Endpoints"]) == 1
    assert len(aws_client("apigateway").get_rest_apis()["items"]) == 1
    assert len(aws_client("apigateway").get_api_keys()["items"]) == 1
    assert len(aws_client("apigateway").get_usage_plans()["items"]) == 1
    assert builds_started() == 1

    api_client_for(owner).delete("/api/v1/endpoints/iris-sm/")
    assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
    assert endpoint_resources("iris-sm") == []


def test_rdeploy_gc_lists_a_planted_orphan_and_deletes_it(
    aws: MotoServer, owner: User, api_client_for: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    create_public(owner, api_client_for)
    drive(latest("iris-sm"))
    orphan_tags = tagging.resource_tags(settings.INSTALLATION_ID, endpoint="gone", deployment=999)
    aws_client("sagemaker").create_model(
        ModelName=named("gone-d999"),
        ExecutionRoleArn=settings.RDEPLOY_SAGEMAKER_ROLE_ARN,
        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/rdeploy-runtime:x"},
        Tags=[{"Key": k, "Value": v} for k, v in orphan_tags.items()],
    )

    call_command("rdeploy_gc")
    listed = capsys.readouterr().out

    assert f"sagemaker_model {named('gone-d999')}" in listed
    assert named("iris-sm") not in listed
    call_command("rdeploy_gc", "--delete")
    capsys.readouterr()
    names = {m["ModelName"] for m in aws_client("sagemaker").list_models()["Models"]}
    assert names == {rollout_name(latest("iris-sm"))}
    assert Endpoint.objects.get(name="iris-sm").status == Endpoint.Status.LIVE
    assert endpoint_name(Endpoint.objects.get(name="iris-sm")) == named("iris-sm")


def test_cloudwatch_lines_of_the_endpoint_appear_in_its_logs(aws: MotoServer, owner: User, api_client_for: Any) -> None:
    create_public(owner, api_client_for)
    drive(latest("iris-sm"))
    group = f"/aws/sagemaker/Endpoints/{named('iris-sm')}"
    cloudwatch = aws_client("logs")
    # rdeploy made the group before the endpoint: SageMaker writes into it.
    cloudwatch.create_log_stream(logGroupName=group, logStreamName="main/i-1")
    now = int(time.time() * 1000)
    cloudwatch.put_log_events(
        logGroupName=group,
        logStreamName="main/i-1",
        logEvents=[{"timestamp": now, "message": "rdeploy: model loaded"}, {"timestamp": now + 1, "message": "ready"}],
    )
    endpoint = Endpoint.objects.get(name="iris-sm")
    target = get_target("sagemaker")

    assert target.collect_logs(endpoint) == 2
    # Again at once: nothing new (and CloudWatch is not asked again within 10 s).
    assert target.collect_logs(endpoint) == 0
    lines = list(
        LogLine.objects.filter(endpoint=endpoint, source=LogLine.Source.ENDPOINT).values_list("message", flat=True)
    )
    assert lines == ["rdeploy: model loaded", "ready"]


def test_model_data_is_the_runtimes_model_directory_as_tar_gz_and_uploaded_once(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    deployment = drive(latest("iris-sm"))
    bucket, key = deployment.resources[ExternalResource.Kind.MODEL_DATA].removeprefix("s3://").split("/", 1)

    data = aws_client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        assert archive.extractfile("model.rds").read() == b"model-1"  # type: ignore[union-attr]
    assert key == f"{prefix()}/model-data/{model_version_directory_digest(deployment.model_version)}/model.tar.gz"
    assert deployment.steps.get(name="upload_model_data").status == DeploymentStep.Status.SUCCEEDED
    tags = aws_client("s3").get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    assert {"Key": tagging.ENDPOINT, "Value": "iris-sm"} in tags


def test_the_image_tag_is_the_build_contexts_hash_and_other_packages_need_another_build(
    aws: MotoServer, owner: User
) -> None:
    first = stub_model(owner)
    other = stub_model(owner, content=b"model-2", packages={"required": [{"name": "ranger", "version": "0.14"}]})
    expected = render_build_context(packages=["randomForest"], base_image=PUBLIC_BASE_IMAGE).tag

    assert image_build_context(first).tag == expected
    assert image_build_context(other).tag != expected
    assert "ranger\n" in image_build_context(other).files["build/packages.txt"][0].decode()


def test_a_rotated_key_reaches_the_authorizer_and_its_cache_is_flushed_once_lambda_serves_it(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    """moto has no FlushStageAuthorizersCache (404): a Stubber answers that one call and
    checks its parameters. Lambda's update still in progress is a Stubber answer on
    GetFunctionConfiguration (moto applies updates at once)."""
    create_public(owner, api_client_for)
    drive(latest("iris-sm"))
    new_key = api_client_for(owner).post("/api/v1/endpoints/iris-sm/rotate-key").json()["api_key"]
    endpoint = Endpoint.objects.get(name="iris-sm")
    target = get_target("sagemaker")
    api_id = aws_client("apigateway").get_rest_apis()["items"][0]["id"]
    function = aws_client("lambda").get_function_configuration(FunctionName=named("iris-sm"))
    in_progress = {
        "FunctionName": named("iris-sm"),
        "Environment": {"Variables": {**function["Environment"]["Variables"], "RDEPLOY_API_KEY_SHA256": "x"}},
        "LastUpdateStatus": "InProgress",
    }

    # Lambda still applies the new environment: flushing now could cache the old key again.
    with (
        SingleCallStubber(aws_client("lambda"), "GetFunctionConfiguration") as lambda_stub,
        Stubber(aws_client("apigateway")),
    ):
        lambda_stub.add_response("get_function_configuration", in_progress)
        lambda_stub.add_response("get_function_configuration", in_progress)
        with pytest.raises(TransientStepError, match="not active yet"):
            target.push_api_key(endpoint)
    with SingleCallStubber(aws_client("apigateway"), "FlushStageAuthorizersCache") as flush:
        flush.add_response("flush_stage_authorizers_cache", {}, {"restApiId": api_id, "stageName": "v1"})
        target.push_api_key(endpoint)
        flush.assert_no_pending_responses()

    variables = aws_client("lambda").get_function_configuration(FunctionName=named("iris-sm"))["Environment"]
    assert variables["Variables"]["RDEPLOY_API_KEY_SHA256"] == hashlib.sha256(new_key.encode()).hexdigest()
    # Once per key: the reconciler's checks flush nothing more (no API Gateway call at all).
    calls: list[str] = []
    apigateway = aws_client("apigateway")
    apigateway.meta.events.register("before-call.*.*", lambda model, **_: calls.append(model.name), "count")
    try:
        target.check(endpoint)
    finally:
        apigateway.meta.events.unregister("before-call.*.*", unique_id="count")
    assert calls == []
    aws_client("sagemaker").delete_endpoint(EndpointName=named("iris-sm"))
    with pytest.raises(PermanentStepError, match=f"{named('iris-sm')} no longer exists"):
        target.check(endpoint)


def test_a_serverless_endpoint_gets_a_serverless_config_and_bad_options_are_refused(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    client = api_client_for(owner)
    model = stub_model(owner)
    refused = client.post(
        "/api/v1/endpoints/",
        {
            "name": "iris-bad-options",
            "model": model.pk,
            "target": "sagemaker",
            "options": {"serverless": {"memory_mb": 2048}, "autoscaling": {"min": 1, "max": 2}},
        },
        format="json",
    )
    assert refused.status_code == 400
    assert "autoscaling applies to instance endpoints" in refused.content.decode()

    created = client.post(
        "/api/v1/endpoints/",
        {"name": "iris-sl", "model": model.pk, "target": "sagemaker", "options": {"serverless": {"memory_mb": 3072}}},
        format="json",
    )
    assert created.status_code == 202, created.content
    deployment = drive(latest("iris-sl"))

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    config = aws_client("sagemaker").describe_endpoint_config(EndpointConfigName=rollout_name(deployment))
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 5}
    assert "InstanceType" not in config["ProductionVariants"][0]


def test_an_image_no_endpoint_uses_stays_for_the_grace_period_then_gc_removes_it(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    deployment = drive(latest("iris-sm"))
    push_image(deployment.resources[ExternalResource.Kind.ECR_IMAGE])
    api_client_for(owner).delete("/api/v1/endpoints/iris-sm/")
    drive(latest("iris-sm"))
    repository, tag = deployment.resources[ExternalResource.Kind.ECR_IMAGE].split(":")

    assert ecr.image_exists(repository, tag)
    assert cloud_orphans() == []
    orphans = cloud_orphans(image_grace_seconds=0)
    assert [(o.kind, o.identifier) for o in orphans] == [
        (ExternalResource.Kind.ECR_IMAGE, deployment.resources[ExternalResource.Kind.ECR_IMAGE])
    ]
    cloud_orphans_delete(orphans)
    assert not ecr.image_exists(repository, tag)
    assert not ExternalResource.objects.filter(deleted_at__isnull=True).exists()


def test_model_data_shared_by_two_endpoints_stays_until_the_last_one_is_deleted(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    client = api_client_for(owner)
    model = stub_model(owner)
    for name in ("iris-a", "iris-b"):
        response = client.post(
            "/api/v1/endpoints/", {"name": name, "model": model.pk, "target": "sagemaker"}, format="json"
        )
        assert response.status_code == 202
        assert drive(latest(name)).status == Deployment.Status.SUCCEEDED
    uri = latest("iris-a").resources[ExternalResource.Kind.MODEL_DATA]
    assert latest("iris-b").resources[ExternalResource.Kind.MODEL_DATA] == uri
    bucket, key = uri.removeprefix("s3://").split("/", 1)

    client.delete("/api/v1/endpoints/iris-a/")
    assert drive(latest("iris-a")).status == Deployment.Status.SUCCEEDED
    assert s3.object_exists(bucket, key)
    assert ExternalResource.objects.get(kind=ExternalResource.Kind.MODEL_DATA, identifier=uri).endpoint.name == "iris-b"  # type: ignore[union-attr]

    client.delete("/api/v1/endpoints/iris-b/")
    assert drive(latest("iris-b")).status == Deployment.Status.SUCCEEDED
    assert not s3.object_exists(bucket, key)


def test_build_log_lines_stream_into_the_deployment_log_and_a_failed_build_says_why(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    """moto's CodeBuild runs nothing and logs nothing: a Stubber on BatchGetBuilds reports
    the build's progress; its log lines are real moto CloudWatch events."""
    model = stub_model(owner)
    api_client_for(owner).post(
        "/api/v1/endpoints/", {"name": "iris-build", "model": model.pk, "target": "sagemaker"}, format="json"
    )
    deployment = latest("iris-build")
    group, stream = f"/aws/codebuild/{named('image-builder')}", "build-1"
    cloudwatch = aws_client("logs")
    cloudwatch.create_log_group(logGroupName=group)
    cloudwatch.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    cloudwatch.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[
            {"timestamp": now, "message": "Step 2/11 : FROM public.ecr.aws/debian/debian:trixie-slim"},
            {"timestamp": now + 1, "message": "installing ranger ... ERROR: compilation failed"},
        ],
    )

    def build(status: str) -> dict[str, Any]:
        return {
            "builds": [
                {
                    "id": f"{named('image-builder')}:1",
                    "buildStatus": status,
                    "currentPhase": "BUILD" if status == "IN_PROGRESS" else "COMPLETED",
                    "logs": {"groupName": group, "streamName": stream},
                    "phases": [{"phaseType": "BUILD", "contexts": [{"message": "COMMAND_EXECUTION_ERROR: exit 1"}]}]
                    if status == "FAILED"
                    else [],
                }
            ]
        }

    with SingleCallStubber(aws_client("codebuild"), "BatchGetBuilds") as stub:
        stub.add_response("batch_get_builds", build("IN_PROGRESS"))
        stub.add_response("batch_get_builds", build("FAILED"))
        deployment = drive(deployment)

    assert deployment.status == Deployment.Status.FAILED
    build_lines = list(
        LogLine.objects.filter(deployment=deployment, source=LogLine.Source.BUILD).values_list("message", flat=True)
    )
    assert build_lines[1:] == [
        "Step 2/11 : FROM public.ecr.aws/debian/debian:trixie-slim",
        "installing ranger ... ERROR: compilation failed",
    ]
    message = deployment.steps.get(name="build_image").message
    assert "COMMAND_EXECUTION_ERROR: exit 1" in message
    assert "compilation failed" in message
    # Nothing of the failed first rollout is left but the installation's repository.
    assert (
        not ExternalResource.objects.filter(deleted_at__isnull=True)
        .exclude(kind=ExternalResource.Kind.ECR_IMAGE)
        .exists()
    )


def test_a_failed_update_keeps_the_image_and_model_data_the_live_version_uses(
    aws: MotoServer, owner: User, api_client_for: Any, settings: Any
) -> None:
    create_public(owner, api_client_for)
    first = drive(latest("iris-sm"))
    push_image(first.resources[ExternalResource.Kind.ECR_IMAGE])
    client = api_client_for(owner)
    client.post(
        "/api/v1/endpoints/iris-sm/deployments", {"model": stub_model(owner, content=b"model-2").pk}, format="json"
    )
    settings.RDEPLOY_SAGEMAKER_ROLE_ARN = None

    update = drive(latest("iris-sm"))

    assert update.status == Deployment.Status.FAILED
    assert "RDEPLOY_SAGEMAKER_ROLE_ARN" in update.error
    endpoint = Endpoint.objects.get(name="iris-sm")
    assert endpoint.status == Endpoint.Status.LIVE
    image = ExternalResource.objects.get(
        kind=ExternalResource.Kind.ECR_IMAGE, identifier=first.resources[ExternalResource.Kind.ECR_IMAGE]
    )
    assert (image.endpoint, image.deleted_at, image.details.get("unused_since")) == (endpoint, None, None)
    bucket, key = first.resources[ExternalResource.Kind.MODEL_DATA].removeprefix("s3://").split("/", 1)
    assert s3.object_exists(bucket, key)
    # The failed update's own model data is gone; the live version's model and endpoint stay.
    failed_bucket, failed_key = update.resources[ExternalResource.Kind.MODEL_DATA].removeprefix("s3://").split("/", 1)
    assert not s3.object_exists(failed_bucket, failed_key)
    assert {m["ModelName"] for m in aws_client("sagemaker").list_models()["Models"]} == {rollout_name(first)}
    assert cloud_orphans() == []


def test_codebuild_builds_the_same_rendered_context_on_a_public_debian_base(
    aws: MotoServer, owner: User, api_client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads: dict[str, bytes] = {}
    starts: list[dict[str, Any]] = []
    upload_file, start_build = s3.upload_file, codebuild.start_build

    def recorded_upload(bucket: str, key: str, path: Path, **options: Any) -> None:
        uploads[key] = path.read_bytes()
        upload_file(bucket, key, path, **options)

    def recorded_start(project: str, **options: Any) -> str:
        starts.append(options)
        return start_build(project, **options)

    monkeypatch.setattr(s3, "upload_file", recorded_upload)
    monkeypatch.setattr(codebuild, "start_build", recorded_start)
    model = stub_model(owner)
    api_client_for(owner).post(
        "/api/v1/endpoints/", {"name": "iris-cb", "model": model.pk, "target": "sagemaker"}, format="json"
    )

    deployment = drive(latest("iris-cb"))

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    context = render_build_context(packages=["randomForest"], base_image=PUBLIC_BASE_IMAGE)
    (start,) = starts
    assert start["base_image"] == PUBLIC_BASE_IMAGE
    assert start["image_uri"].endswith(f"/rdeploy-runtime:{context.tag}")
    with zipfile.ZipFile(io.BytesIO(uploads[f"{prefix()}/build-context/{context.tag}.zip"])) as archive:
        assert {name: archive.read(name) for name in archive.namelist()} == {
            path: content for path, (content, _) in context.files.items()
        }
    buildspec = aws_client("codebuild").batch_get_projects(names=[named("image-builder")])["projects"][0]["source"][
        "buildspec"
    ]
    assert 'docker build --pull --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE_URI" .' in buildspec
