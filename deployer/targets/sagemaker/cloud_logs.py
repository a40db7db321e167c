"""The endpoint's CloudWatch log groups: rdeploy makes them (tagged, with a retention)
before SageMaker or Lambda write there, and copies their new lines into the endpoint's log
(docs/sagemaker.md, "Logs")."""

from __future__ import annotations

from collections.abc import Mapping

from django.db import transaction

from deployer.integrations.aws import logs
from deployer.integrations.aws.client import AwsError
from deployer.models import Endpoint, ExternalResource, LogLine
from deployer.targets.base import StepContext
from deployer.targets.sagemaker.names import endpoint_log_group, endpoint_name, function_log_group, step_tags
from deployer.targets.sagemaker.ownership import ensure_ours

LOG_LINES_IN_FAILURE = 20
MAX_LOG_LINES_PER_COLLECT = 1000
# rdeploy creates the log groups SageMaker, Lambda and CodeBuild write to, so they carry
# its tags and do not keep lines forever; the endpoint's lines are copied into its log.
LOG_RETENTION_DAYS = 30


def ensure_log_group(ctx: StepContext, group: str) -> None:
    ensure_ours(ExternalResource.Kind.LOG_GROUP, group)
    ctx.record_resource(ExternalResource.Kind.LOG_GROUP, group)
    logs.ensure_log_group(group, tags=step_tags(ctx), retention_days=LOG_RETENTION_DAYS)


def collect_logs(endpoint: Endpoint) -> int:
    groups = {endpoint_log_group(endpoint): LogLine.Source.ENDPOINT}
    if endpoint.public:
        groups[function_log_group(endpoint)] = LogLine.Source.GATEWAY
    try:
        return copy_log_lines(endpoint, groups, drain=False)
    except AwsError:
        # Logs are best effort: the next collection continues from the saved cursor.
        return 0


def copy_log_lines(endpoint: Endpoint, groups: Mapping[str, str], *, drain: bool) -> int:
    """New lines of ``groups`` ({group: LogLine source}) into the endpoint's log: one
    batch per group, or (``drain``) every line there is. Each batch is stored together
    with its group's cursor (kept on the SageMaker endpoint's record, the row locked
    meanwhile), so a rerun or a concurrent collection never copies a line twice."""
    record = ExternalResource.objects.named(
        Endpoint.Target.SAGEMAKER, ExternalResource.Kind.SAGEMAKER_ENDPOINT, endpoint_name(endpoint)
    ).first()
    if record is None:
        return 0
    stored = 0
    for group, source in groups.items():
        while True:
            with transaction.atomic():
                resource = record.locked()
                cursors: dict[str, int] = dict(resource.details.get("log_cursors", {}))
                events = logs.events_since(group, start_ms=cursors.get(group, 0), limit=MAX_LOG_LINES_PER_COLLECT)
                if events:
                    LogLine.objects.bulk_create(
                        LogLine(endpoint=endpoint, source=source, message=event.message.rstrip()) for event in events
                    )
                    cursors[group] = events[-1].timestamp + 1
                    resource.merge_details(log_cursors=cursors)
                    stored += len(events)
            if not drain or len(events) < MAX_LOG_LINES_PER_COLLECT:
                break
    return stored


def log_source(group: str) -> str:
    return LogLine.Source.GATEWAY if group.startswith("/aws/lambda/") else LogLine.Source.ENDPOINT
