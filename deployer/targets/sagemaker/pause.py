"""Start of a stopped SageMaker endpoint (issue 14): step ``recreate_endpoint`` and
``wait_restarted``; the stop itself is the teardown's ``remove_autoscaling`` and
``remove_endpoint``. A stop removes only the billed part, the endpoint (and its scalable
target); the model, the endpoint config, the image, the model data and the public API
(Lambda, API Gateway, key) stay, so a start recreates the endpoint from the serving
rollout's config and builds and uploads nothing."""

from __future__ import annotations

from deployer.integrations.aws import sagemaker
from deployer.models import ExternalResource
from deployer.targets.base import PermanentStepError, StepContext, StepOutcome
from deployer.targets.sagemaker import teardown
from deployer.targets.sagemaker.endpoint import wait_until_serving
from deployer.targets.sagemaker.names import endpoint_name, step_tags
from deployer.targets.sagemaker.ownership import ensure_ours


def kept_config(ctx: StepContext) -> str:
    """The endpoint config of the rollout that served before the stop."""
    served = ctx.previous
    config = served.resources.get(ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG) if served else None
    if (
        not config
        or not ExternalResource.objects.live()
        .named(ctx.endpoint.target, ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG, config)
        .exists()
    ):
        raise PermanentStepError("The endpoint config this endpoint served from is gone; deploy a version again.")
    return str(config)


def recreate_endpoint(ctx: StepContext) -> StepOutcome:
    config = kept_config(ctx)
    name = endpoint_name(ctx.endpoint)
    ensure_ours(ExternalResource.Kind.SAGEMAKER_ENDPOINT, name)
    ctx.record_resource(ExternalResource.Kind.SAGEMAKER_ENDPOINT, name)
    state = sagemaker.describe_endpoint(name)
    if state is not None and state.status == "Deleting":
        return StepOutcome.wait(10, f"SageMaker endpoint {name} is still being deleted.")
    if state is None:
        sagemaker.create_endpoint(name, config_name=config, tags=step_tags(ctx))
        return StepOutcome.done(f"Creating SageMaker endpoint {name} from the kept config {config}.")
    return StepOutcome.done(f"SageMaker endpoint {name} exists ({state.status}).")


def wait_restarted(ctx: StepContext) -> StepOutcome:
    return wait_until_serving(ctx, config=kept_config(ctx))


def discard_start(ctx: StepContext) -> None:
    """A failed start removes the endpoint it recreated: a stopped endpoint bills nothing."""
    teardown.remove_autoscaling(ctx)
    if teardown.remove_endpoint(ctx).kind == StepOutcome.WAIT:
        # The pipeline retries a cleanup that raises, until the endpoint is gone.
        raise RuntimeError("The recreated SageMaker endpoint is still being deleted.")
