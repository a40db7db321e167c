"""Steps ``create_model``, ``deploy_endpoint`` (blue/green on an update), ``wait_in_service``,
``autoscaling`` and ``switch_traffic``: the SageMaker model, endpoint config and endpoint."""

from __future__ import annotations

from typing import Any

from deployer.integrations.aws import autoscaling, cloudwatch, logs, sagemaker
from deployer.models import ExternalResource
from deployer.targets.base import PermanentStepError, StepContext, StepOutcome
from deployer.targets.sagemaker.cloud_logs import LOG_LINES_IN_FAILURE, ensure_log_group
from deployer.targets.sagemaker.names import (
    VARIANT,
    aws_region,
    endpoint_log_group,
    endpoint_name,
    required_setting,
    rollout_name,
    step_tags,
)
from deployer.targets.sagemaker.options import DEFAULTS, ROLLBACK_DEFAULTS, rollback_alarms
from deployer.targets.sagemaker.ownership import ensure_ours

# How often waiting steps poll, and how long an endpoint may take to come up beyond its
# own startup health-check window (instances are provisioned first).
POLL_SECONDS = 20.0
PROVISIONING_ALLOWANCE = 30 * 60
UPDATE_VISIBLE_SECONDS = 120


def create_model(ctx: StepContext) -> StepOutcome:
    role = required_setting("RDEPLOY_SAGEMAKER_ROLE_ARN")
    name = rollout_name(ctx.deployment)
    image = ctx.resource(ExternalResource.Kind.ECR_IMAGE).details["uri"]
    model_data = ctx.resource_id(ExternalResource.Kind.MODEL_DATA)
    ensure_ours(ExternalResource.Kind.SAGEMAKER_MODEL, name)
    ctx.record_resource(ExternalResource.Kind.SAGEMAKER_MODEL, name)
    environment = {"RDEPLOY_MODEL_VERSION": str(ctx.model_version)}
    sagemaker.create_model(
        name, image=image, model_data_url=model_data, role_arn=role, environment=environment, tags=step_tags(ctx)
    )
    return StepOutcome.done(f"SageMaker model {name} ({image}).")


def production_variant(ctx: StepContext, model: str) -> dict[str, Any]:
    """The production variant serving ``model`` with the endpoint's options."""
    options = ctx.options
    variant: dict[str, Any] = {"VariantName": VARIANT, "ModelName": model}
    if options.get("serverless"):
        serverless = options["serverless"]
        variant["ServerlessConfig"] = {
            "MemorySizeInMB": serverless["memory_mb"],
            "MaxConcurrency": serverless["max_concurrency"],
        }
        return variant
    count = options.get("instance_count", 1)
    if options.get("autoscaling"):
        count = max(count, options["autoscaling"]["min"])
    variant.update(
        InstanceType=options.get("instance_type", DEFAULTS["instance_type"]),
        InitialInstanceCount=count,
        InitialVariantWeight=1.0,
        ContainerStartupHealthCheckTimeoutInSeconds=options.get("startup_timeout", 600),
        ModelDataDownloadTimeoutInSeconds=options.get("startup_timeout", 600),
    )
    return variant


def deploy_endpoint(ctx: StepContext) -> StepOutcome:
    model = ctx.resource_id(ExternalResource.Kind.SAGEMAKER_MODEL)
    config = rollout_name(ctx.deployment)
    name = endpoint_name(ctx.endpoint)
    # Before anything is recorded: a failed rollout's cleanup must not reach for the other's.
    ensure_ours(ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG, config)
    ensure_ours(ExternalResource.Kind.SAGEMAKER_ENDPOINT, name)
    ctx.record_resource(ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG, config)
    sagemaker.create_endpoint_config(config, variant=production_variant(ctx, model), tags=step_tags(ctx))
    ctx.record_resource(ExternalResource.Kind.SAGEMAKER_ENDPOINT, name)
    # Made before the endpoint, so SageMaker writes into a tagged group with a retention.
    ensure_log_group(ctx, endpoint_log_group(ctx.endpoint))
    state = sagemaker.describe_endpoint(name)
    if state is None:
        sagemaker.create_endpoint(name, config_name=config, tags=step_tags(ctx))
        return StepOutcome.done(f"Creating SageMaker endpoint {name}.")
    if state.config_name == config:
        return StepOutcome.done(f"SageMaker endpoint {name} is already on {config}.")
    if state.status != sagemaker.ENDPOINT_READY:
        return StepOutcome.wait(POLL_SECONDS, f"Endpoint {name} is {state.status}; the update waits for it.")
    # A registered scalable target blocks changes to its variant; autoscaling re-registers it.
    autoscaling.disable(name, VARIANT)
    if ctx.options.get("serverless"):
        # Serverless endpoints take no deployment config and switch on their own.
        sagemaker.update_endpoint(name, config_name=config)
        return StepOutcome.done(f"Updating serverless SageMaker endpoint {name} to {config}.")
    sagemaker.update_endpoint(name, config_name=config, deployment_config=_blue_green(ctx, name))
    return StepOutcome.done(f"Updating SageMaker endpoint {name} to {config} (blue/green).")


def _blue_green(ctx: StepContext, name: str) -> dict[str, Any]:
    """SageMaker starts the new fleet, shifts traffic, keeps the old fleet for the bake
    time and sends traffic back to it if an alarm fires meanwhile. rdeploy's own alarms
    are created (recorded first) before SageMaker is told to watch them."""
    alarm_names = []
    for alarm in rollback_alarms(ctx.endpoint, ctx.options):
        ensure_ours(ExternalResource.Kind.CLOUDWATCH_ALARM, alarm.name)
        ctx.record_resource(ExternalResource.Kind.CLOUDWATCH_ALARM, alarm.name)
        cloudwatch.ensure_variant_alarm(alarm, endpoint=name, variant=VARIANT, tags=step_tags(ctx))
        alarm_names.append(alarm.name)
    alarm_names += list(ctx.options.get("rollback_alarms") or [])
    policy: dict[str, Any] = {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
        "TerminationWaitInSeconds": 0,
    }
    blue_green: dict[str, Any] = {"BlueGreenUpdatePolicy": policy}
    if alarm_names:
        rollback = {**ROLLBACK_DEFAULTS, **(ctx.options.get("rollback") or {})}
        policy["TerminationWaitInSeconds"] = rollback["bake_seconds"]
        blue_green["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": alarm} for alarm in alarm_names]}
    return blue_green


def endpoint_failure(name: str, headline: str, reason: str) -> PermanentStepError:
    lines = logs.last_lines(f"/aws/sagemaker/Endpoints/{name}", count=LOG_LINES_IN_FAILURE)
    message = f"{headline}: {reason or 'SageMaker gave no reason'}"
    if lines:
        message += "\nLast lines of the endpoint's log:\n" + "\n".join(lines)
    return PermanentStepError(message)


def wait_in_service(ctx: StepContext) -> StepOutcome:
    return wait_until_serving(ctx, config=rollout_name(ctx.deployment))


def wait_until_serving(ctx: StepContext, *, config: str) -> StepOutcome:
    """Until the endpoint is InService on ``config`` (this rollout's, or the kept one a
    start recreates the endpoint from)."""
    name = endpoint_name(ctx.endpoint)
    state = sagemaker.describe_endpoint(name)
    if state is None:
        raise PermanentStepError(f"SageMaker endpoint {name} disappeared while it was being deployed.")
    if state.status in sagemaker.ENDPOINT_FAILED:
        raise endpoint_failure(name, f"SageMaker endpoint {name} failed", state.failure_reason)
    if state.status == sagemaker.ENDPOINT_READY:
        if state.config_name == config:
            return StepOutcome.done(f"SageMaker endpoint {name} is InService.")
        # InService on another config after an update started means SageMaker rolled
        # back; before it was seen updating, the update has not shown up yet.
        if ctx.intent.get("saw_update") or ctx.elapsed() > UPDATE_VISIBLE_SECONDS:
            raise endpoint_failure(
                name, f"SageMaker rolled endpoint {name} back to its previous version", state.failure_reason
            )
        return StepOutcome.wait(POLL_SECONDS, f"Waiting for SageMaker to start updating {name}.")
    if not ctx.intent.get("saw_update"):
        ctx.intent["saw_update"] = True
        ctx.save_intent()
    if ctx.elapsed() > ctx.options.get("startup_timeout", 600) + PROVISIONING_ALLOWANCE:
        raise endpoint_failure(name, f"SageMaker endpoint {name} did not come up in time", state.failure_reason)
    return StepOutcome.wait(POLL_SECONDS, f"SageMaker endpoint {name} is {state.status}.")


def configure_autoscaling(ctx: StepContext) -> StepOutcome:
    scaling = ctx.options.get("autoscaling")
    if not scaling:
        return StepOutcome.skipped("No autoscaling asked for.")
    name = endpoint_name(ctx.endpoint)
    ensure_ours(ExternalResource.Kind.AUTOSCALING_TARGET, f"{name}/{VARIANT}")
    ctx.record_resource(ExternalResource.Kind.AUTOSCALING_TARGET, f"{name}/{VARIANT}")
    autoscaling.enable(
        name,
        VARIANT,
        min_capacity=scaling["min"],
        max_capacity=scaling["max"],
        target=scaling["target_invocations"],
        tags=step_tags(ctx),
    )
    return StepOutcome.done(
        f"Autoscaling {scaling['min']}-{scaling['max']} instances at {scaling['target_invocations']} "
        "invocations per instance per minute."
    )


def switch_traffic(ctx: StepContext) -> StepOutcome:
    ctx.set_runtime(
        endpoint_name=endpoint_name(ctx.endpoint),
        region=aws_region(),
        variant=VARIANT,
        deployment=ctx.deployment.pk,
    )
    return StepOutcome.done("Traffic goes to the new version.")
