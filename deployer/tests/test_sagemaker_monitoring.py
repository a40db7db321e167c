"""The SageMaker target's log groups and rollback alarms against moto (server mode): rdeploy
creates them tagged, teardown copies the last log lines and removes them, `rdeploy_gc`
finds those left behind.

moto lacks ``UpdateEndpoint``: updates run under ``EndpointUpdates`` (testsupport/moto.py),
which records each call and switches moto's endpoint to the new config, as SageMaker
finishing the update would.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command

from deployer.integrations.aws import ecr, tagging
from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, Endpoint, ExternalResource, LogLine
from deployer.services.cloud_gc import cloud_orphans
from deployer.targets import get_target
from deployer.tests.sagemaker_support import create_public, drive, latest, named, push_image, stub_model, tagged
from testsupport.moto import EndpointUpdates, MotoServer

pytestmark = pytest.mark.django_db
SAGEMAKER_GROUP = f"/aws/sagemaker/Endpoints/{named('iris-sm')}"
LAMBDA_GROUP = f"/aws/lambda/{named('iris-sm')}"


def endpoint_log_groups() -> dict[str, dict[str, Any]]:
    """Every log group SageMaker or Lambda would write an rdeploy endpoint's lines to."""
    groups: dict[str, dict[str, Any]] = {}
    for prefix in ("/aws/sagemaker/Endpoints/", "/aws/lambda/"):
        for group in aws_client("logs").describe_log_groups(logGroupNamePrefix=prefix)["logGroups"]:
            groups[group["logGroupName"]] = group
    return groups


def alarm_names() -> set[str]:
    return {alarm["AlarmName"] for alarm in aws_client("cloudwatch").describe_alarms()["MetricAlarms"]}


def write_log_lines(group: str, *messages: str, stream: str = "main/i-1") -> None:
    cloudwatch = aws_client("logs")
    if not cloudwatch.describe_log_streams(logGroupName=group, logStreamNamePrefix=stream)["logStreams"]:
        cloudwatch.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    events = [{"timestamp": now + offset, "message": message} for offset, message in enumerate(messages)]
    cloudwatch.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)


def update_to_a_second_version(owner: User, api_client_for: Any, name: str) -> tuple[Deployment, EndpointUpdates]:
    image = latest(name).resources[ExternalResource.Kind.ECR_IMAGE]
    if not ecr.image_exists(*image.split(":")):
        push_image(image)
    model = stub_model(owner, content=b"model-2")
    response = api_client_for(owner).post(f"/api/v1/endpoints/{name}/deployments", {"model": model.pk}, format="json")
    assert response.status_code == 202, response.content
    with EndpointUpdates(aws_client("sagemaker")) as updates:
        update = drive(latest(name))
    assert update.status == Deployment.Status.SUCCEEDED, update.error
    return update, updates


def test_the_endpoints_log_groups_are_made_by_rdeploy_tagged_and_with_a_retention(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    deployment = drive(latest("iris-sm"))

    groups = endpoint_log_groups()
    assert set(groups) == {SAGEMAKER_GROUP, LAMBDA_GROUP}
    for group in groups.values():
        assert group["retentionInDays"] == 30
        tags = aws_client("logs").list_tags_for_resource(resourceArn=group["logGroupArn"])["tags"]
        assert tags == {
            tagging.INSTALLATION: settings.INSTALLATION_ID,
            tagging.ENDPOINT: "iris-sm",
            tagging.DEPLOYMENT: str(deployment.pk),
        }
    recorded = ExternalResource.objects.filter(kind=ExternalResource.Kind.LOG_GROUP, deleted_at__isnull=True)
    assert set(recorded.values_list("identifier", flat=True)) == {SAGEMAKER_GROUP, LAMBDA_GROUP}


def test_teardown_copies_the_last_log_lines_then_removes_the_log_groups_and_alarms(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    drive(latest("iris-sm"))
    update_to_a_second_version(owner, api_client_for, "iris-sm")
    assert alarm_names() == {named("iris-sm-5xx"), named("iris-sm-latency")}
    endpoint = Endpoint.objects.get(name="iris-sm")
    write_log_lines(SAGEMAKER_GROUP, "rdeploy: model loaded")
    assert get_target("sagemaker").collect_logs(endpoint) == 1
    # Written after the last collection, just before the endpoint goes.
    write_log_lines(SAGEMAKER_GROUP, "SIGTERM received, draining", "stopped")
    write_log_lines(LAMBDA_GROUP, "END RequestId: 1", stream="2026/11/25/[$LATEST]abc")

    assert api_client_for(owner).delete("/api/v1/endpoints/iris-sm/").status_code == 202
    deletion = drive(latest("iris-sm"))

    assert deletion.status == Deployment.Status.SUCCEEDED, deletion.error
    lines = LogLine.objects.filter(endpoint=endpoint).order_by("id")
    assert list(lines.filter(source=LogLine.Source.ENDPOINT).values_list("message", flat=True)) == [
        "rdeploy: model loaded",
        "SIGTERM received, draining",
        "stopped",
    ]
    assert list(
        lines.filter(source=LogLine.Source.GATEWAY, message__startswith="END").values_list("message", flat=True)
    ) == ["END RequestId: 1"]
    assert endpoint_log_groups() == {}
    assert alarm_names() == set()
    assert tagged() == []
    assert not ExternalResource.objects.filter(
        kind__in=[ExternalResource.Kind.LOG_GROUP, ExternalResource.Kind.CLOUDWATCH_ALARM], deleted_at__isnull=True
    ).exists()


def test_teardown_counts_log_groups_and_alarms_already_gone_as_removed(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    drive(latest("iris-sm"))
    update_to_a_second_version(owner, api_client_for, "iris-sm")
    for group in (SAGEMAKER_GROUP, LAMBDA_GROUP):
        aws_client("logs").delete_log_group(logGroupName=group)
    aws_client("cloudwatch").delete_alarms(AlarmNames=[named("iris-sm-5xx"), named("iris-sm-latency")])

    api_client_for(owner).delete("/api/v1/endpoints/iris-sm/")
    deletion = drive(latest("iris-sm"))

    assert deletion.status == Deployment.Status.SUCCEEDED, deletion.error
    assert deletion.steps.get(name="remove_monitoring").message == "Removed 4 alarm(s) and log group(s)."
    assert tagged() == []


def test_updates_watch_alarms_with_the_endpoints_thresholds_or_none_when_rollback_is_off(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for, rollback={"errors_per_minute": 1, "latency_ms": 500, "bake_seconds": 600})
    drive(latest("iris-sm"))
    create_public(owner, api_client_for, name="iris-off", rollback=False)
    drive(latest("iris-off"))

    _, strict = update_to_a_second_version(owner, api_client_for, "iris-sm")
    _, off = update_to_a_second_version(owner, api_client_for, "iris-off")

    [strict_call], [off_call] = strict.calls, off.calls
    assert strict_call["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TerminationWaitInSeconds"] == 600
    assert strict_call["DeploymentConfig"]["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": named("iris-sm-5xx")}, {"AlarmName": named("iris-sm-latency")}]
    }
    thresholds = {
        alarm["AlarmName"]: alarm["Threshold"] for alarm in aws_client("cloudwatch").describe_alarms()["MetricAlarms"]
    }
    assert thresholds == {named("iris-sm-5xx"): 1.0, named("iris-sm-latency"): 500_000.0}
    assert off_call["DeploymentConfig"] == {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "TerminationWaitInSeconds": 0,
        }
    }
    refused = api_client_for(owner).post(
        "/api/v1/endpoints/",
        {
            "name": "iris-bad",
            "model": stub_model(owner).pk,
            "target": "sagemaker",
            "options": {"rollback": {"latency_ms": 0}},
        },
        format="json",
    )
    assert refused.status_code == 400
    assert "rollback.latency_ms must be a whole number" in refused.content.decode()


def test_rdeploy_gc_finds_log_groups_and_alarms_no_endpoint_owns(
    aws: MotoServer, owner: User, api_client_for: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    create_public(owner, api_client_for)
    drive(latest("iris-sm"))
    cloudwatch, logs = aws_client("cloudwatch"), aws_client("logs")
    orphan_tags = tagging.resource_tags(settings.INSTALLATION_ID, endpoint="gone", deployment=999)
    cloudwatch.put_metric_alarm(
        AlarmName=named("gone-5xx"),
        Namespace="AWS/SageMaker",
        MetricName="Invocation5XXErrors",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=5,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        Tags=[{"Key": k, "Value": v} for k, v in orphan_tags.items()],
    )
    # What SageMaker creates itself for a line written after teardown: untagged.
    logs.create_log_group(logGroupName=f"/aws/sagemaker/Endpoints/{named('gone')}")
    logs.create_log_group(logGroupName=f"/aws/lambda/{named('gone')}", tags=orphan_tags)
    # Another installation's group (same prefix) is not this installation's to delete.
    logs.create_log_group(logGroupName=f"/aws/lambda/{named('theirs')}", tags={tagging.INSTALLATION: "someone-else"})

    call_command("rdeploy_gc")
    listed = capsys.readouterr().out

    assert f"cloudwatch_alarm {named('gone-5xx')} (endpoint gone)" in listed
    assert f"log_group /aws/sagemaker/Endpoints/{named('gone')}\n" in listed
    assert f"log_group /aws/lambda/{named('gone')} (endpoint gone)" in listed
    assert named("iris-sm") not in listed
    assert named("theirs") not in listed
    call_command("rdeploy_gc", "--delete")
    capsys.readouterr()
    assert alarm_names() == set()
    assert set(endpoint_log_groups()) == {SAGEMAKER_GROUP, LAMBDA_GROUP, f"/aws/lambda/{named('theirs')}"}
    assert Endpoint.objects.get(name="iris-sm").status == Endpoint.Status.LIVE


def test_groups_sagemaker_and_lambda_made_themselves_are_their_endpoints_and_go_with_it(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    """An endpoint deployed before rdeploy made log groups has them from SageMaker and
    Lambda, untagged and unrecorded: gc leaves them to it, and its teardown removes them."""
    create_public(owner, api_client_for)
    drive(latest("iris-sm"))
    for group in (SAGEMAKER_GROUP, LAMBDA_GROUP):
        aws_client("logs").delete_log_group(logGroupName=group)
        aws_client("logs").create_log_group(logGroupName=group)
    ExternalResource.objects.filter(kind=ExternalResource.Kind.LOG_GROUP).delete()

    assert [orphan for orphan in cloud_orphans() if orphan.kind == ExternalResource.Kind.LOG_GROUP] == []

    write_log_lines(SAGEMAKER_GROUP, "last words")
    api_client_for(owner).delete("/api/v1/endpoints/iris-sm/")
    deletion = drive(latest("iris-sm"))

    assert deletion.status == Deployment.Status.SUCCEEDED, deletion.error
    assert endpoint_log_groups() == {}
    assert LogLine.objects.filter(source=LogLine.Source.ENDPOINT, message="last words").count() == 1
    assert tagged() == []
