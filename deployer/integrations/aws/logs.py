"""CloudWatch Logs: the endpoint's, the build's and the Lambda function's log lines, and
the log groups themselves (rdeploy creates them, tagged and with a retention policy,
before SageMaker, Lambda or CodeBuild write into them)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from botocore.exceptions import ClientError

from deployer.integrations.aws.client import (
    aws_client,
    is_already_exists,
    ok_if_missing,
    raises_aws_error,
    unless_missing,
)


@dataclass(frozen=True)
class LogEvent:
    timestamp: int  # milliseconds since the epoch
    stream: str
    message: str


@raises_aws_error
def events_since(group: str, *, start_ms: int = 0, limit: int = 500, stream: str | None = None) -> list[LogEvent]:
    """Events of ``group`` (optionally one stream) at or after ``start_ms``, oldest first.

    A group that does not exist yet (nothing logged so far) has no events.
    """
    arguments: dict[str, object] = {"logGroupName": group, "startTime": start_ms, "limit": limit}
    if stream:
        arguments["logStreamNames"] = [stream]
    events: list[LogEvent] = []
    client = aws_client("logs")
    with ok_if_missing():
        while True:
            page = client.filter_log_events(**arguments)
            events.extend(
                LogEvent(int(event["timestamp"]), str(event.get("logStreamName", "")), str(event["message"]))
                for event in page.get("events", [])
            )
            token = page.get("nextToken")
            if not token or len(events) >= limit:
                break
            arguments["nextToken"] = token
        events.sort(key=lambda event: event.timestamp)
        return events[:limit]
    return []


def last_lines(group: str, *, count: int = 20, window_ms: int = 3_600_000) -> list[str]:
    """The last ``count`` messages of ``group`` within the last hour (for a failure message)."""
    start = int(time.time() * 1000) - window_ms
    return [event.message.rstrip() for event in events_since(group, start_ms=start, limit=10_000)[-count:]]


@raises_aws_error
def ensure_log_group(group: str, *, tags: dict[str, str], retention_days: int) -> None:
    """Create the group with ``tags`` (tag it when it already exists, e.g. made by the
    service that writes into it) and (re)put its retention policy; every call an upsert."""
    client = aws_client("logs")
    try:
        client.create_log_group(logGroupName=group, tags=tags)
    except ClientError as error:
        if not is_already_exists(error):
            raise
        arn = next(arn for name, arn in log_groups(group) if name == group)
        client.tag_resource(resourceArn=arn, tags=tags)
    client.put_retention_policy(logGroupName=group, retentionInDays=retention_days)


@raises_aws_error
def log_groups(prefix: str) -> list[tuple[str, str]]:
    """(name, ARN without the trailing ``:*``) of every group whose name starts with ``prefix``."""
    found: list[tuple[str, str]] = []
    for page in aws_client("logs").get_paginator("describe_log_groups").paginate(logGroupNamePrefix=prefix):
        for group in page["logGroups"]:
            arn = str(group.get("logGroupArn") or str(group["arn"]).removesuffix(":*"))
            found.append((str(group["logGroupName"]), arn))
    return found


@raises_aws_error
def log_group_tags(group: str) -> dict[str, str] | None:
    """The group's tags, or None when there is no such group."""
    arn = next((arn for name, arn in log_groups(group) if name == group), None)
    return None if arn is None else tags_of(arn)


@raises_aws_error
def tags_of(arn: str) -> dict[str, str]:
    return dict(unless_missing(lambda: aws_client("logs").list_tags_for_resource(resourceArn=arn)["tags"], {}))


@raises_aws_error
def delete_log_group(group: str) -> None:
    """Missing counts as deleted."""
    with ok_if_missing():
        aws_client("logs").delete_log_group(logGroupName=group)
