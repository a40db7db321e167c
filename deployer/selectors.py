"""Reusable reads. Every query that reaches user data starts from `visible_to(user)`."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db.models import QuerySet

from deployer.models import Deployment, DeploymentStep, Endpoint, LogLine, ModelVersion

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


def endpoint_list(*, user: User | AnonymousUser) -> QuerySet[Endpoint]:
    """Endpoints the user may see, most recently changed first, with what a list row shows."""
    return (
        Endpoint.objects.visible_to(user)
        .select_related("model_version", "current_deployment__model_version")
        .only(
            "id",
            "name",
            "target",
            "status",
            "updated_at",
            "owner_id",
            "model_version__id",
            "model_version__name",
            "model_version__version",
            "current_deployment__id",
            "current_deployment__status",
            "current_deployment__model_version__id",
            "current_deployment__model_version__name",
            "current_deployment__model_version__version",
        )
        .order_by("-updated_at", "-id")
    )


def endpoint_is_busy(endpoint: Endpoint) -> bool:
    """Something is happening: a transitional status, or a rollout not picked up yet (an
    update leaves a live endpoint live until its first step runs)."""
    if endpoint.status in Endpoint.BUSY:
        return True
    deployment = endpoint.current_deployment
    return deployment is not None and deployment.status in Deployment.ACTIVE


def deployment_steps(*, deployment: Deployment | None) -> list[DeploymentStep]:
    if deployment is None:
        return []
    return list(DeploymentStep.objects.filter(deployment=deployment).order_by("position"))


# The fields a log line is shown with, in LogLineSerializer's order.
LOG_PAGE_FIELDS = ("id", "created_at", "source", "level", "message", "deployment")


def _log_lines_after(endpoint: Endpoint, after: int) -> QuerySet[LogLine]:
    # One range scan of the (endpoint, id) index.
    return LogLine.objects.filter(endpoint=endpoint, id__gt=after).order_by("id")


def log_lines_after(*, endpoint: Endpoint, after: int, limit: int = 200) -> list[LogLine]:
    """The next `limit` lines after the cursor."""
    return list(_log_lines_after(endpoint, after).only(*LOG_PAGE_FIELDS)[:limit])


def log_line_rows_after(*, endpoint: Endpoint, after: int, limit: int) -> list[tuple[Any, ...]]:
    """``log_lines_after`` as tuples of ``LOG_PAGE_FIELDS``: a page of 500 lines is polled
    by every client following a log, and building 500 model instances cost about a third
    of its time."""
    return list(_log_lines_after(endpoint, after).values_list(*LOG_PAGE_FIELDS)[:limit])


def log_lines_tail(*, endpoint: Endpoint, limit: int = 200, sources: tuple[str, ...] = ()) -> list[LogLine]:
    """The last `limit` lines (optionally of some sources), oldest first: what a page shows
    before it starts tailing. Walks the (endpoint, id) index backwards."""
    lines = LogLine.objects.filter(endpoint=endpoint)
    if sources:
        lines = lines.filter(source__in=sources)
    tail = list(lines.only("id", "created_at", "source", "level", "message").order_by("-id")[:limit])
    tail.reverse()
    return tail


def runtime_log_messages(*, endpoint: Endpoint, limit: int) -> list[tuple[datetime, str]]:
    """(created_at, message) of the last `limit` runtime/endpoint log lines, oldest first:
    plain tuples, because a chart reads thousands of them."""
    rows = list(
        LogLine.objects.filter(endpoint=endpoint, source__in=(LogLine.Source.RUNTIME, LogLine.Source.ENDPOINT))
        .order_by("-id")
        .values_list("created_at", "message")[:limit]
    )
    rows.reverse()
    return rows


def model_version_list(*, user: User | AnonymousUser) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.visible_to(user).order_by("name", "-version")


def model_versions_ready(*, user: User | AnonymousUser, name: str | None = None) -> QuerySet[ModelVersion]:
    """Versions that can be deployed (optionally of one model name), newest first."""
    versions = ModelVersion.objects.visible_to(user).filter(status=ModelVersion.Status.READY)
    if name is not None:
        versions = versions.filter(name=name)
    return versions.order_by("name", "-version")
