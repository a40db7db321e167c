"""Collecting an endpoint's new log lines from its target (a write); reading them is
``selectors.log_lines_after``."""

from __future__ import annotations

import redis
from django.core.cache import cache

from deployer.models import Endpoint
from deployer.targets import get_target


def endpoint_logs_collect(*, endpoint: Endpoint) -> int:
    """Copy the target's new log lines into the endpoint's log; how many were stored.

    The one throttle of log collection: at most once per endpoint every
    ``log_collect_seconds`` of its target, across processes, however many pages,
    clients and reconcilers ask (CloudWatch allows few FilterLogEvents calls a second).
    """
    target = get_target(endpoint.target)
    # The creation time too: a name (and in tests an id) can be reused by a new endpoint.
    key = f"rdeploy:logs-collected:{endpoint.pk}:{endpoint.created_at.timestamp()}"
    try:
        first = cache.add(key, 1, timeout=target.log_collect_seconds)
    except redis.RedisError:
        # Redis down: no shared throttle, so no collection; the stored lines stay readable.
        return 0
    if not first:
        return 0
    return target.collect_logs(endpoint)
