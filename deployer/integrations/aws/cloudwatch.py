"""CloudWatch: the metric alarms on an endpoint's variant that SageMaker watches
during a blue/green update, rolling back when one fires, its traffic (docs/cost.md), and
the server errors of a public API (a stopped endpoint's calls, docs/sagemaker.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from deployer.integrations.aws.client import (
    aws_client,
    ok_if_missing,
    raises_aws_error,
    tag_list,
    unless_missing,
)

NAMESPACE = "AWS/SageMaker"


@dataclass(frozen=True)
class VariantAlarm:
    """``metric`` of one endpoint variant compared with ``threshold`` (``>=``) over
    ``evaluation_periods`` periods of ``period`` seconds; no data (no traffic) is fine."""

    name: str
    metric: str
    statistic: str
    threshold: float
    period: int
    evaluation_periods: int
    description: str


@raises_aws_error
def ensure_variant_alarm(alarm: VariantAlarm, *, endpoint: str, variant: str, tags: dict[str, str]) -> None:
    """PutMetricAlarm is an upsert: a rerun (or changed thresholds) overwrites the alarm.
    (AWS applies ``tags`` only when it creates the alarm.)"""
    aws_client("cloudwatch").put_metric_alarm(
        AlarmName=alarm.name,
        AlarmDescription=alarm.description,
        Namespace=NAMESPACE,
        MetricName=alarm.metric,
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}],
        Statistic=alarm.statistic,
        Period=alarm.period,
        EvaluationPeriods=alarm.evaluation_periods,
        Threshold=alarm.threshold,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="notBreaching",
        Tags=tag_list(tags),
    )


@raises_aws_error
def delete_alarm(name: str) -> None:
    """Missing counts as deleted."""
    with ok_if_missing():
        aws_client("cloudwatch").delete_alarms(AlarmNames=[name])


@raises_aws_error
def alarms(prefix: str) -> list[tuple[str, str]]:
    """(name, ARN) of every metric alarm whose name starts with ``prefix``."""
    found: list[tuple[str, str]] = []
    paginator = aws_client("cloudwatch").get_paginator("describe_alarms")
    for page in paginator.paginate(AlarmNamePrefix=prefix, AlarmTypes=["MetricAlarm"]):
        found.extend((str(alarm["AlarmName"]), str(alarm["AlarmArn"])) for alarm in page["MetricAlarms"])
    return found


@raises_aws_error
def alarm_tags(name: str) -> dict[str, str] | None:
    """The metric alarm's tags, or None when there is no such alarm."""
    found = aws_client("cloudwatch").describe_alarms(AlarmNames=[name], AlarmTypes=["MetricAlarm"])["MetricAlarms"]
    return tags_of(str(found[0]["AlarmArn"])) if found else None


@raises_aws_error
def tags_of(arn: str) -> dict[str, str]:
    client = aws_client("cloudwatch")
    tags: list[Any] = unless_missing(lambda: client.list_tags_for_resource(ResourceARN=arn)["Tags"], [])
    return {tag["Key"]: tag["Value"] for tag in tags}


@raises_aws_error
def variant_traffic(*, endpoint: str, variant: str, start: datetime, end: datetime) -> tuple[float, float | None]:
    """(invocations, mean ModelLatency in milliseconds or None without any) of one
    endpoint variant between ``start`` and ``end``: what a serverless endpoint and the
    public API bill by (docs/cost.md)."""
    client = aws_client("cloudwatch")
    dimensions = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
    period = max(60, int((end - start).total_seconds()) // 60 * 60)

    def points(metric: str, *statistics: str) -> list[Any]:
        answer = client.get_metric_statistics(
            Namespace=NAMESPACE,
            MetricName=metric,
            Dimensions=dimensions,
            StartTime=start,
            EndTime=end,
            Period=period,
            Statistics=list(statistics),
        )
        return list(answer["Datapoints"])

    invocations = sum(float(point["Sum"]) for point in points("Invocations", "Sum"))
    latency = points("ModelLatency", "Average", "SampleCount")
    samples = sum(float(point["SampleCount"]) for point in latency)
    if not samples:
        return invocations, None
    # ModelLatency is in microseconds; the mean is weighted by each period's samples.
    return invocations, sum(float(p["Average"]) * float(p["SampleCount"]) for p in latency) / samples / 1000


# GetMetricStatistics answers at most this many datapoints per call.
MAX_DATAPOINTS = 1440


@raises_aws_error
def last_invocation(*, endpoint: str, variant: str, start: datetime, end: datetime) -> datetime | None:
    """The end of the latest period between ``start`` and ``end`` in which the variant's
    ``Invocations`` sum was above zero (so never earlier than the call), or None when it
    summed to zero over the whole window: how idle stop judges a SageMaker endpoint."""
    seconds = int((end - start).total_seconds())
    # One call: whole minutes, coarser for windows longer than a day of minutes.
    period = max(60, -(-seconds // MAX_DATAPOINTS // 60) * 60)
    answer = aws_client("cloudwatch").get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName="Invocations",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}],
        StartTime=start,
        EndTime=end,
        Period=period,
        Statistics=["Sum"],
    )
    called = [point["Timestamp"] for point in answer["Datapoints"] if float(point["Sum"]) > 0]
    return min(max(called) + timedelta(seconds=period), end) if called else None


@raises_aws_error
def api_server_errors(*, api: str, stage: str, start: datetime, end: datetime) -> int:
    """How many calls to the stage of the REST API named ``api`` API Gateway answered with a
    5xx status between ``start`` and ``end``: its ``5XXError`` metric, summed over one period.
    (CloudWatch rounds ``start`` down to the minute, 5 minutes beyond 15 days ago.)"""
    seconds = max(60, -(-int((end - start).total_seconds()) // 60) * 60)
    answer = aws_client("cloudwatch").get_metric_statistics(
        Namespace="AWS/ApiGateway",
        MetricName="5XXError",
        Dimensions=[{"Name": "ApiName", "Value": api}, {"Name": "Stage", "Value": stage}],
        StartTime=start,
        EndTime=end,
        Period=seconds,
        Statistics=["Sum"],
    )
    return round(sum(float(point["Sum"]) for point in answer["Datapoints"]))
