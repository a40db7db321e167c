"""Shadows on SageMaker's own shadow variants (docs/shadow.md): the steps of the ``shadow``,
``promote`` and ``end_shadow`` deployments that are not the rollout's own, and their discard.

A shadow is the rollout's model-data, image and model steps (the image is found by its
content hash: nothing is built twice), then one endpoint config holding the live
production variant unchanged, the shadow's model as ``ShadowProductionVariants`` (its
weight against the production variant's 1.0 is the sample share) and ``DataCaptureConfig``
(inputs and answers, every request, under the config's own prefix in rdeploy's bucket);
the endpoint is updated to it. SageMaker copies the requests itself, so every caller's
requests are copied (API Gateway's as well as rdeploy's route), and nothing is added to
the request path; ``shadow_capture`` reads the pairs back.

Promote adopts the shadow's model and config, updates the endpoint to a config with that
model as its only production variant (the rollout's ``deploy_endpoint``: blue/green, rollback
alarms), then retires the previous model and config and the shadow's config. End updates
the endpoint back to the live config and removes the shadow's model and config. A failed
shadow, promote or end puts the endpoint back on the live config before removing anything:
a shadow variant left running would be billed with nobody reading it.
"""

from __future__ import annotations

from typing import Any

from deployer.integrations.aws import autoscaling, sagemaker
from deployer.models import Deployment, ExternalResource, Shadow
from deployer.targets.base import PermanentStepError, StepContext, StepOutcome
from deployer.targets.sagemaker import endpoint as endpoint_steps
from deployer.targets.sagemaker import teardown
from deployer.targets.sagemaker.endpoint import POLL_SECONDS, wait_until_serving
from deployer.targets.sagemaker.names import (
    SHADOW_VARIANT,
    VARIANT,
    capture_key_prefix,
    endpoint_name,
    required_setting,
    rollout_name,
    step_tags,
)
from deployer.targets.sagemaker.ownership import ensure_ours
from deployer.targets.sagemaker.pause import kept_config
from deployer.targets.sagemaker.shadow_capture import collect_shadow_pairs


def _shadow(ctx: StepContext) -> Shadow:
    shadow = ctx.shadow
    if shadow is None:
        raise PermanentStepError("The endpoint has no shadow.")
    return shadow


def _live_model(ctx: StepContext) -> str:
    served = ctx.previous
    model = served.resources.get(ExternalResource.Kind.SAGEMAKER_MODEL) if served else None
    if not model:
        raise PermanentStepError("The live version's SageMaker model is not recorded; deploy a version again.")
    return str(model)


def data_capture(destination: str) -> dict[str, Any]:
    return {
        "EnableCapture": True,
        "InitialSamplingPercentage": 100,
        "DestinationS3Uri": destination,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        # Captured as text (not base64) for the types the R runtime answers with.
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"], "CsvContentTypes": ["text/csv"]},
    }


def check_shadow(ctx: StepContext) -> StepOutcome:
    """Before anything is built: what a SageMaker shadow needs."""
    if ctx.options.get("serverless"):
        raise PermanentStepError(
            "A serverless SageMaker endpoint cannot run a shadow: Serverless Inference has no shadow "
            "variants and no data capture. Deploy the endpoint on instances (instance_type) to use one."
        )
    _shadow(ctx)
    required_setting("RDEPLOY_S3_BUCKET")
    kept_config(ctx)
    _live_model(ctx)
    return StepOutcome.done("The live version runs on instances: SageMaker can copy its requests.")


def _move_endpoint_to(ctx: StepContext, config: str) -> StepOutcome:
    """Update the endpoint to ``config`` unless it is on it already (a rerun)."""
    name = endpoint_name(ctx.endpoint)
    state = sagemaker.describe_endpoint(name)
    if state is None:
        raise PermanentStepError(f"SageMaker endpoint {name} no longer exists.")
    if state.config_name == config:
        return StepOutcome.done(f"SageMaker endpoint {name} is on {config}.")
    if state.status != sagemaker.ENDPOINT_READY:
        return StepOutcome.wait(POLL_SECONDS, f"Endpoint {name} is {state.status}; the update waits for it.")
    # A registered scalable target blocks changes to its variant; the autoscaling step re-registers it.
    autoscaling.disable(name, VARIANT)
    sagemaker.update_endpoint(name, config_name=config)
    return StepOutcome.done(f"Updating SageMaker endpoint {name} to {config}.")


def deploy_shadow(ctx: StepContext) -> StepOutcome:
    shadow = _shadow(ctx)
    bucket = required_setting("RDEPLOY_S3_BUCKET")
    config = rollout_name(ctx.deployment)
    destination = f"s3://{bucket}/{capture_key_prefix(config)}"
    ensure_ours(ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG, config)
    ctx.record_resource(ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG, config, {"capture_uri": destination})
    copy = endpoint_steps.production_variant(ctx, ctx.resource_id(ExternalResource.Kind.SAGEMAKER_MODEL))
    # SageMaker copies to a shadow variant the share its weight makes of the production
    # variant's (1.0): docs/shadow.md says what is documented and what is assumed.
    copy.update(VariantName=SHADOW_VARIANT, InitialVariantWeight=shadow.sample_percent / 100)
    sagemaker.create_endpoint_config(
        config,
        variant=endpoint_steps.production_variant(ctx, _live_model(ctx)),
        shadow_variant=copy,
        data_capture=data_capture(destination),
        tags=step_tags(ctx),
    )
    return _move_endpoint_to(ctx, config)


def wait_shadow(ctx: StepContext) -> StepOutcome:
    return wait_until_serving(ctx, config=rollout_name(ctx.deployment))


def start_copies(ctx: StepContext) -> StepOutcome:
    uri = ctx.resource(ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG).details["capture_uri"]
    # No "runtime" fact: the gateway sends nothing, SageMaker copies and the reconciler
    # collects the pairs (collect_shadow_pairs).
    ctx.set_shadow_runtime(
        copies="sagemaker", endpoint_name=endpoint_name(ctx.endpoint), variant=SHADOW_VARIANT, capture_prefix=uri
    )
    return StepOutcome.done(f"SageMaker copies {_shadow(ctx).sample_percent}% of the live requests to the shadow.")


def adopt_shadow(ctx: StepContext) -> StepOutcome:
    adopted = ctx.adopt_shadow_resources()
    return StepOutcome.done(f"Took over the shadow's {len(adopted)} resource(s): nothing is built again.")


def _remove_shadow_config(ctx: StepContext, shadow: Shadow) -> int:
    """The last pairs, then the shadow's endpoint config and its capture files."""
    collect_shadow_pairs(shadow)
    config = rollout_name(shadow.deployment)
    removed = 0
    for resource in ctx.live_resources().filter(
        kind=ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG, identifier=config
    ):
        teardown.remove_resource(ctx, resource)
        removed += 1
    return removed


def retire_shadow_config(ctx: StepContext) -> StepOutcome:
    """After a promote: the shadow's config is not used any more (its model now is)."""
    removed = _remove_shadow_config(ctx, _shadow(ctx))
    return (
        StepOutcome.done("Removed the shadow's endpoint config and capture files.")
        if removed
        else StepOutcome.skipped()
    )


def stop_copies(ctx: StepContext) -> StepOutcome:
    ctx.set_shadow_runtime()
    return StepOutcome.done("No more pairs are collected.")


def restore_live(ctx: StepContext) -> StepOutcome:
    return _move_endpoint_to(ctx, kept_config(ctx))


def wait_live(ctx: StepContext) -> StepOutcome:
    return wait_until_serving(ctx, config=kept_config(ctx))


def remove_shadow(ctx: StepContext) -> StepOutcome:
    shadow = _shadow(ctx)
    _remove_shadow_config(ctx, shadow)
    teardown.discard(ctx, shadow.deployment)
    return StepOutcome.done("Removed the shadow's SageMaker model and endpoint config; the capture files are deleted.")


def discard(ctx: StepContext) -> None:
    """A failed shadow, promote (before its switch) or end: the endpoint goes back to the
    live config first, then what the shadow made goes."""
    live = kept_config(ctx)
    name = endpoint_name(ctx.endpoint)
    state = sagemaker.describe_endpoint(name)
    if state is not None and not (state.config_name == live and state.status == sagemaker.ENDPOINT_READY):
        _move_endpoint_to(ctx, live)
        # Raised so the pipeline retries the cleanup once SageMaker has finished the update.
        raise RuntimeError(f"SageMaker endpoint {name} is going back to the live config {live}.")
    if ctx.options.get("autoscaling") and ctx.previous is not None:
        # Disabled for the update; the live version's deployment keeps the record.
        endpoint_steps.configure_autoscaling(ctx)
        ctx.hand_over_resource(ctx.resource(ExternalResource.Kind.AUTOSCALING_TARGET), ctx.previous)
    shadow = ctx.shadow
    if ctx.deployment.kind == Deployment.Kind.END_SHADOW and shadow is not None:
        _remove_shadow_config(ctx, shadow)
        teardown.discard(ctx, shadow.deployment)
        return
    teardown.discard(ctx)
