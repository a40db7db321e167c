"""Options of a SageMaker endpoint (docs/sagemaker.md, "Configuration"): validation with
defaults filled in, and the rollback alarms they ask for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deployer.integrations.aws import cloudwatch
from deployer.models import Endpoint
from deployer.targets.base import STOP_OPTIONS, TargetOptionsError, check_stop_options
from deployer.targets.sagemaker.names import endpoint_name, join_name

DEFAULTS: dict[str, Any] = {
    "instance_type": "ml.m5.large",
    "instance_count": 1,
    "startup_timeout": 600,
    "quota_per_day": 100_000,
}
# The alarms rdeploy creates for a blue/green update (``rollback`` option): SageMaker
# rolls back while either fires during the update or the bake time after it.
ROLLBACK_DEFAULTS: dict[str, int] = {
    # Invocation5XXErrors (Sum) in any one minute.
    "errors_per_minute": 5,
    # ModelLatency (Average, microseconds in CloudWatch) for latency_minutes minutes in a row.
    "latency_ms": 2000,
    "latency_minutes": 2,
    # How long the old fleet is kept (and the alarms watched) after traffic moved.
    "bake_seconds": 300,
}


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    known = {*DEFAULTS, "serverless", "autoscaling", "throttle", "rollback", "rollback_alarms", *STOP_OPTIONS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TargetOptionsError(
            f"Unknown SageMaker option(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
        )
    check_stop_options(options)
    result = {**DEFAULTS, **options}

    def whole(name: str, value: Any, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise TargetOptionsError(f"{name} must be a whole number from {low} to {high}.")
        return value

    if not isinstance(result["instance_type"], str) or not result["instance_type"].startswith("ml."):
        raise TargetOptionsError('instance_type must be a SageMaker instance type such as "ml.m5.large".')
    whole("instance_count", result["instance_count"], 1, 100)
    whole("startup_timeout", result["startup_timeout"], 60, 3600)
    whole("quota_per_day", result["quota_per_day"], 1, 1_000_000_000)
    alarms = result.get("rollback_alarms")
    if alarms is not None:
        valid = isinstance(alarms, list) and all(isinstance(a, str) and 0 < len(a) <= 255 for a in alarms)
        if not valid or not 1 <= len(alarms) <= 8:
            raise TargetOptionsError("rollback_alarms must be a list of 1 to 8 CloudWatch alarm names.")
    rollback = result.get("rollback", True)
    if rollback is True:
        result["rollback"] = dict(ROLLBACK_DEFAULTS)
    elif rollback is not False:
        if not isinstance(rollback, dict) or set(rollback) - set(ROLLBACK_DEFAULTS):
            raise TargetOptionsError(
                'rollback must be false, true or look like {"errors_per_minute": 5, "latency_ms": 2000, '
                '"latency_minutes": 2, "bake_seconds": 300}.'
            )
        rollback = {**ROLLBACK_DEFAULTS, **rollback}
        whole("rollback.errors_per_minute", rollback["errors_per_minute"], 1, 1_000_000)
        whole("rollback.latency_ms", rollback["latency_ms"], 1, 60_000)
        whole("rollback.latency_minutes", rollback["latency_minutes"], 1, 60)
        whole("rollback.bake_seconds", rollback["bake_seconds"], 0, 3600)
        result["rollback"] = rollback
    serverless = result.get("serverless")
    if serverless is not None:
        if not isinstance(serverless, dict) or set(serverless) - {"memory_mb", "max_concurrency"}:
            raise TargetOptionsError('serverless must look like {"memory_mb": 2048, "max_concurrency": 5}.')
        memory = serverless.get("memory_mb", 2048)
        if memory not in (1024, 2048, 3072, 4096, 5120, 6144):
            raise TargetOptionsError("serverless.memory_mb must be one of 1024, 2048, 3072, 4096, 5120, 6144.")
        concurrency = whole("serverless.max_concurrency", serverless.get("max_concurrency", 5), 1, 200)
        result["serverless"] = {"memory_mb": memory, "max_concurrency": concurrency}
    scaling = result.get("autoscaling")
    if scaling is not None:
        if serverless is not None:
            raise TargetOptionsError("autoscaling applies to instance endpoints, not serverless ones.")
        if not isinstance(scaling, dict) or set(scaling) - {"min", "max", "target_invocations"}:
            raise TargetOptionsError('autoscaling must look like {"min": 1, "max": 4, "target_invocations": 100}.')
        low = whole("autoscaling.min", scaling.get("min", 1), 1, 100)
        high = whole("autoscaling.max", scaling.get("max", max(low, 2)), low, 100)
        target = scaling.get("target_invocations", 100)
        if not isinstance(target, int | float) or isinstance(target, bool) or target <= 0:
            raise TargetOptionsError(
                "autoscaling.target_invocations must be a positive number (per instance per minute)."
            )
        result["autoscaling"] = {"min": low, "max": high, "target_invocations": target}
    return result


def rollback_alarms(endpoint: Endpoint, options: Mapping[str, Any]) -> list[cloudwatch.VariantAlarm]:
    """The alarms rdeploy creates for the endpoint's blue/green updates (none when the
    ``rollback`` option is false)."""
    rollback = options.get("rollback", ROLLBACK_DEFAULTS)
    if not rollback:
        return []
    rollback = {**ROLLBACK_DEFAULTS, **rollback}
    name = endpoint_name(endpoint)
    return [
        cloudwatch.VariantAlarm(
            name=join_name(name, "5xx", limit=255),
            metric="Invocation5XXErrors",
            statistic="Sum",
            threshold=float(rollback["errors_per_minute"]),
            period=60,
            evaluation_periods=1,
            description=f"rdeploy: {name} answers 5xx errors; rolls a blue/green update back.",
        ),
        cloudwatch.VariantAlarm(
            name=join_name(name, "latency", limit=255),
            metric="ModelLatency",
            statistic="Average",
            threshold=float(rollback["latency_ms"]) * 1000,
            period=60,
            evaluation_periods=int(rollback["latency_minutes"]),
            description=f"rdeploy: {name} predicts slowly; rolls a blue/green update back.",
        ),
    ]
