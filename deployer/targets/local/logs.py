"""A local runtime's output, read through the container engine (never from a file the
container can write): copied into the endpoint's LogLine rows, within a budget per
collection, and its last lines for error messages."""

from __future__ import annotations

import logging

from django.db import transaction

from deployer.integrations.containers import runtimes
from deployer.models import Endpoint, ExternalResource, LogLine

logger = logging.getLogger(__name__)

# The runtime's own log lines, copied into LogLine at most this many and this many bytes
# per collection (the latest kept), each line cut at MAX_LOG_LINE_BYTES: the engine joins
# what a model prints without a newline into one line of any length.
MAX_LOG_LINES_PER_COLLECT = 2000
MAX_LOG_BYTES_PER_COLLECT = 1024**2
MAX_LOG_LINE_BYTES = 8 * 1024


def last_lines(container: str, count: int = 15) -> str:
    """The runtime's last lines for an error message, without the access lines of our own
    health checks, which would push out what R said."""
    try:
        lines, _ = runtimes.read_logs(container, None)
    except Exception as exc:  # an error message is being written: it must not fail too
        logger.exception("reading the log of %s failed", container)
        return f"(its log could not be read: {exc})"
    kept = [line for line in lines if "/ping " not in line and line.strip()][-count:]
    return "\n".join(kept) if kept else "(the runtime wrote nothing)"


def keep_last_logs(endpoint: Endpoint, container: ExternalResource) -> int:
    """collect_container_logs, for callers whose real work (stopping, restarting,
    supervising the container) comes after it and must happen whatever the log holds."""
    try:
        return collect_container_logs(endpoint, container)
    except Exception:
        logger.exception("collecting the log of container resource %s failed", container.pk)
        return 0


def collect_container_logs(endpoint: Endpoint, container: ExternalResource) -> int:
    """Copy the container's new output lines into the endpoint's log; the number stored."""
    # One transaction per container: concurrent collectors queue on the write lock, and the
    # second one reads the cursor the first one stored, so no line is stored twice.
    with transaction.atomic():
        resource = container.locked()
        cursor = resource.details.get("log_cursor")
        lines, new_cursor = runtimes.read_logs(resource.identifier, cursor)
        if not lines:
            return 0
        messages = _within_budget(lines)
        LogLine.objects.bulk_create(
            LogLine(
                endpoint=endpoint,
                deployment_id=resource.deployment_id,
                source=LogLine.Source.RUNTIME,
                message=message,
            )
            for message in messages
        )
        resource.merge_details(log_cursor=new_cursor)
        return len(messages)


def _within_budget(lines: list[str]) -> list[str]:
    """The latest ``lines`` that fit MAX_LOG_LINES_PER_COLLECT and MAX_LOG_BYTES_PER_COLLECT,
    each cut at MAX_LOG_LINE_BYTES, after a line saying how many were skipped."""
    kept: list[str] = []
    budget = MAX_LOG_BYTES_PER_COLLECT
    for line in reversed(lines):
        message = _cut(line)
        budget -= len(message.encode())
        if budget < 0 or len(kept) == MAX_LOG_LINES_PER_COLLECT:
            break
        kept.append(message)
    skipped = len(lines) - len(kept)
    return ([f"… {skipped} runtime log lines skipped"] if skipped else []) + kept[::-1]


def _cut(line: str) -> str:
    encoded = line.encode()
    if len(encoded) <= MAX_LOG_LINE_BYTES:
        return line
    kept = encoded[:MAX_LOG_LINE_BYTES].decode("utf-8", "ignore")
    return f"{kept} … (cut: {len(encoded) - MAX_LOG_LINE_BYTES} more bytes)"
