"""What one user may run: the installation's allowed SageMaker instance types and each
user's limits (docs/security.md, "Quotas").

Limits come from settings (``QUOTA_MAX_*``) unless staff gave the user a `UserQuota` in
the admin. Every endpoint not deleted counts, failed ones too (their resources may
linger until deleted): its SageMaker instances (the autoscaling maximum when larger;
serverless has none) and its local memory. A new endpoint or an update must leave the
user within every limit; a rollback is not checked (it goes back to what already ran).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError

from deployer.errors import DomainError
from deployer.models import Endpoint, UserQuota

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class QuotaExceeded(DomainError):
    """The request would take the user past one of their limits (the message names it)."""

    kind = "forbidden"


@dataclass(frozen=True)
class Limits:
    max_endpoints: int
    max_instances: int
    max_local_memory_mb: int


def quota_limits(*, user: User) -> Limits:
    """The user's limits: their `UserQuota` where staff set one, the installation's elsewhere."""
    quota = UserQuota.objects.filter(user=user).first()

    def limit(name: str, default: int) -> int:
        value = getattr(quota, name, None)
        return default if value is None else int(value)

    return Limits(
        max_endpoints=limit("max_endpoints", settings.QUOTA_MAX_ENDPOINTS),
        max_instances=limit("max_instances", settings.QUOTA_MAX_INSTANCES),
        max_local_memory_mb=limit("max_local_memory_mb", settings.QUOTA_MAX_LOCAL_MEMORY_MB),
    )


def _instances(target: str, options: Mapping[str, Any]) -> int:
    if target != Endpoint.Target.SAGEMAKER or options.get("serverless"):
        return 0
    return max(int(options.get("instance_count", 1)), int((options.get("autoscaling") or {}).get("max", 0)))


def _local_memory_mb(target: str, options: Mapping[str, Any]) -> int:
    return int(options.get("memory_mb", 0)) if target == Endpoint.Target.LOCAL else 0


def instance_type_check(*, target: str, options: Mapping[str, Any]) -> None:
    """Refuse a SageMaker instance type the installation does not allow (a 400 on options)."""
    if target != Endpoint.Target.SAGEMAKER:
        return
    instance_type = options.get("instance_type")
    allowed = settings.ALLOWED_INSTANCE_TYPES
    if instance_type not in allowed:
        raise ValidationError(
            {
                "options": f"instance_type {instance_type!r} is not allowed on this installation; use one of "
                f"{', '.join(sorted(allowed))} (RDEPLOY_ALLOWED_INSTANCE_TYPES)."
            }
        )


def quota_check(*, owner: User, target: str, options: Mapping[str, Any], endpoint: Endpoint | None = None) -> None:
    """Refuse unless ``owner`` stays within their limits with this endpoint's ``options``:
    a new endpoint when ``endpoint`` is None, else ``endpoint`` as it would run after the
    change. Call inside the transaction that writes, with the owner's row locked."""
    instance_type_check(target=target, options=options)
    limits = quota_limits(user=owner)
    others = Endpoint.objects.filter(owner=owner).exclude(status=Endpoint.Status.DELETED)
    if endpoint is not None:
        others = others.exclude(pk=endpoint.pk)
    elif (count := others.count()) >= limits.max_endpoints:
        raise QuotaExceeded(
            f"Your quota allows {limits.max_endpoints} endpoint(s) and you have {count}: delete one, "
            "or ask staff to raise your max_endpoints."
        )
    rows = list(others.values_list("target", "options"))
    instances = _instances(target, options) + sum(_instances(t, o or {}) for t, o in rows)
    if _instances(target, options) and instances > limits.max_instances:
        raise QuotaExceeded(
            f"This would bring your SageMaker instances to {instances}; your quota is {limits.max_instances} "
            "(max_instances, counting the autoscaling maximum).",
            field="options",
        )
    memory = _local_memory_mb(target, options) + sum(_local_memory_mb(t, o or {}) for t, o in rows)
    if _local_memory_mb(target, options) and memory > limits.max_local_memory_mb:
        raise QuotaExceeded(
            f"This would bring your local endpoints' memory to {memory} MiB; your quota is "
            f"{limits.max_local_memory_mb} MiB (max_local_memory_mb).",
            field="options",
        )
