"""An endpoint's log: collecting its target's new lines (a write) apart from reading them."""

from __future__ import annotations

from django.core.cache import cache

from deployer.models import Endpoint, LogLine
from deployer.targets import get_target

LOG_PAGE = 500


def endpoint_logs_collect(*, endpoint: Endpoint) -> int:
    """Copy the target's new log lines into the endpoint's log; how many were stored.

    The one throttle of log collection: at most once per endpoint every
    ``log_collect_seconds`` of its target, across processes, however many pages,
    clients and reconcilers ask (CloudWatch allows few FilterLogEvents calls a second).
    """
    target = get_target(endpoint.target)
    # The creation time too: a name (and in tests an id) can be reused by a new endpoint.
    key = f"rdeploy:logs-collected:{endpoint.pk}:{endpoint.created_at.timestamp()}"
    if not cache.add(key, 1, timeout=target.log_collect_seconds):
        return 0
    return target.collect_logs(endpoint)


def endpoint_logs(*, endpoint: Endpoint, after: int = 0, limit: int = LOG_PAGE) -> tuple[list[LogLine], int]:
    """Log lines after the cursor ``after`` (a LogLine id) and the cursor to pass next."""
    lines = list(LogLine.objects.filter(endpoint=endpoint, id__gt=after).order_by("id")[:limit])
    return lines, (lines[-1].pk if lines else after)
