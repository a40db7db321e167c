"""CloudWatch Logs: the endpoint's, the build's and the Lambda function's log lines."""

from __future__ import annotations

import time
from dataclasses import dataclass

from botocore.exceptions import ClientError

from deployer.integrations.aws.client import aws_client, is_not_found


@dataclass(frozen=True)
class LogEvent:
    timestamp: int  # milliseconds since the epoch
    stream: str
    message: str


def events_since(group: str, *, start_ms: int = 0, limit: int = 500, stream: str | None = None) -> list[LogEvent]:
    """Events of ``group`` (optionally one stream) at or after ``start_ms``, oldest first.

    A group that does not exist yet (nothing logged so far) has no events.
    """
    arguments: dict[str, object] = {"logGroupName": group, "startTime": start_ms, "limit": limit}
    if stream:
        arguments["logStreamNames"] = [stream]
    events: list[LogEvent] = []
    client = aws_client("logs")
    try:
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
    except ClientError as error:
        if is_not_found(error):
            return []
        raise
    events.sort(key=lambda event: event.timestamp)
    return events[:limit]


def last_lines(group: str, *, count: int = 20, window_ms: int = 3_600_000) -> list[str]:
    """The last ``count`` messages of ``group`` within the last hour (for a failure message)."""
    start = int(time.time() * 1000) - window_ms
    return [event.message.rstrip() for event in events_since(group, start_ms=start, limit=10_000)[-count:]]


def delete_log_group(group: str) -> None:
    try:
        aws_client("logs").delete_log_group(logGroupName=group)
    except ClientError as error:
        if not is_not_found(error):
            raise
