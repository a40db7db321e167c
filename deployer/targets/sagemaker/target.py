"""``SageMakerTarget``: the steps of each deployment kind and the table naming the function
that runs each step, plus the hooks outside deployments (invoke, check, key push, logs)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from deployer.integrations.aws import sagemaker
from deployer.integrations.aws.client import AwsConfigurationError, AwsError, AwsUnreachable
from deployer.models import Deployment, Endpoint, Shadow
from deployer.targets.base import (
    InvocationResult,
    PermanentStepError,
    RuntimeUnavailable,
    StepContext,
    StepOutcome,
    Target,
    TransientStepError,
)
from deployer.targets.sagemaker import (
    cloud_logs,
    image,
    model_data,
    pause,
    public_api,
    shadow,
    shadow_capture,
    teardown,
)
from deployer.targets.sagemaker import endpoint as endpoint_steps
from deployer.targets.sagemaker import options as endpoint_options
from deployer.targets.sagemaker.names import endpoint_name

# Every step by name: searching for a step's name finds the function that runs it.
STEPS: dict[str, Callable[[StepContext], StepOutcome]] = {
    "upload_model_data": model_data.upload_model_data,
    "build_image": image.build_image,
    "create_model": endpoint_steps.create_model,
    "deploy_endpoint": endpoint_steps.deploy_endpoint,
    "wait_in_service": endpoint_steps.wait_in_service,
    "autoscaling": endpoint_steps.configure_autoscaling,
    "public_function": public_api.public_function,
    "public_api": public_api.public_api,
    "switch_traffic": endpoint_steps.switch_traffic,
    "retire_previous": teardown.retire_previous,
    "remove_public_api": teardown.remove_public_api,
    "remove_autoscaling": teardown.remove_autoscaling,
    "remove_endpoint": teardown.remove_endpoint,
    "remove_models": teardown.remove_models,
    "remove_monitoring": teardown.remove_monitoring,
    "release_artifacts": teardown.release_artifacts,
    "recreate_endpoint": pause.recreate_endpoint,
    "wait_restarted": pause.wait_restarted,
    "check_shadow": shadow.check_shadow,
    "deploy_shadow": shadow.deploy_shadow,
    "wait_shadow": shadow.wait_shadow,
    "start_copies": shadow.start_copies,
    "adopt_shadow": shadow.adopt_shadow,
    "retire_shadow_config": shadow.retire_shadow_config,
    "stop_copies": shadow.stop_copies,
    "restore_live": shadow.restore_live,
    "wait_live": shadow.wait_live,
    "remove_shadow": shadow.remove_shadow,
}
# The rollout's steps that build the version and make its SageMaker model (a shadow's too).
MODEL_STEPS = ["upload_model_data", "build_image", "create_model"]


class SageMakerTarget(Target):
    name = "sagemaker"
    build_steps = frozenset({"upload_model_data", "build_image"})
    # CloudWatch's FilterLogEvents allows only a few calls per second per account.
    log_collect_seconds = 10
    # An update changes the endpoint in place: InService on the new config, it serves.
    switches_traffic_at = {
        "create": "switch_traffic",
        "update": "wait_in_service",
        "rollback": "wait_in_service",
        "promote": "wait_in_service",
    }

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return endpoint_options.validate_options(options)

    def steps(self, kind: str, *, public: bool) -> list[str]:
        if kind == Deployment.Kind.DELETE:
            return [
                "remove_public_api",
                "remove_autoscaling",
                "remove_endpoint",
                "remove_models",
                "remove_monitoring",
                "release_artifacts",
            ]
        if kind == Deployment.Kind.STOP:
            # The billed part only: model, config, image and public API stay for the start.
            return ["remove_autoscaling", "remove_endpoint"]
        if kind == Deployment.Kind.START:
            return ["recreate_endpoint", "wait_restarted", "autoscaling", "switch_traffic"]
        if kind == Deployment.Kind.SHADOW:
            return ["check_shadow", *MODEL_STEPS, "deploy_shadow", "wait_shadow", "autoscaling", "start_copies"]
        if kind == Deployment.Kind.END_SHADOW:
            return ["stop_copies", "restore_live", "wait_live", "autoscaling", "remove_shadow"]
        public_steps = ["public_function", "public_api"] if public else []
        serving_steps = ["deploy_endpoint", "wait_in_service", "autoscaling", *public_steps, "switch_traffic"]
        if kind == Deployment.Kind.PROMOTE:
            return ["adopt_shadow", *serving_steps, "retire_previous", "retire_shadow_config"]
        return [*MODEL_STEPS, *serving_steps, "retire_previous"]

    def run_step(self, name: str, ctx: StepContext) -> StepOutcome:
        step = STEPS.get(name)
        if step is None:
            raise PermanentStepError(f"Unknown SageMaker step {name!r}.")
        try:
            return step(ctx)
        except AwsConfigurationError as error:
            raise PermanentStepError(str(error)) from error
        except AwsError as error:
            if error.transient:
                raise TransientStepError(
                    f"AWS is throttling or unavailable ({error.code or error.message}); retrying."
                ) from error
            raise PermanentStepError(f"AWS refused {name.replace('_', ' ')}: {error.code}: {error.message}") from error

    def discard(self, ctx: StepContext) -> None:
        if ctx.deployment.kind == Deployment.Kind.START:
            pause.discard_start(ctx)
        elif ctx.deployment.kind in (*Deployment.SHADOW_KINDS, Deployment.Kind.PROMOTE):
            shadow.discard(ctx)
        else:
            teardown.discard(ctx)

    def invoke(self, runtime: Mapping[str, Any], body: bytes, headers: Mapping[str, str]) -> InvocationResult:
        name = runtime.get("endpoint_name")
        if not name:
            raise RuntimeUnavailable("The endpoint has no SageMaker endpoint yet.")
        lowered = {key.lower(): value for key, value in headers.items()}
        try:
            result = sagemaker.invoke_endpoint(
                str(name),
                body=body,
                content_type=lowered.get("content-type") or "application/json",
                accept=lowered.get("accept") or "application/json",
                custom_attributes=lowered.get("x-amzn-sagemaker-custom-attributes", ""),
            )
        except AwsUnreachable as error:
            raise RuntimeUnavailable(f"SageMaker did not answer: {error.message}") from error
        except AwsError as error:
            if error.transient:
                return InvocationResult(429, b'{"error": "SageMaker is throttling; retry with backoff"}', {})
            raise RuntimeUnavailable(f"SageMaker: {error.code}: {error.message}") from error
        response_headers = {"Content-Type": result.content_type}
        if result.custom_attributes:
            response_headers["X-Amzn-SageMaker-Custom-Attributes"] = result.custom_attributes
        return InvocationResult(result.status, result.body, response_headers)

    def check(self, endpoint: Endpoint) -> None:
        name = str(endpoint.runtime.get("endpoint_name") or endpoint_name(endpoint))
        try:
            state = sagemaker.describe_endpoint(name)
            if state is None:
                raise PermanentStepError(f"SageMaker endpoint {name} no longer exists.")
            if state.status in sagemaker.ENDPOINT_FAILED:
                raise endpoint_steps.endpoint_failure(name, f"SageMaker endpoint {name} failed", state.failure_reason)
            if endpoint.public:
                public_api.sync_public_key(endpoint)
        except AwsError as error:
            if error.transient:
                return
            raise PermanentStepError(f"AWS: {error.code}: {error.message}") from error

    def push_api_key(self, endpoint: Endpoint) -> None:
        if not public_api.sync_public_key(endpoint):
            # The push task retries with backoff; the reconciler's check would finish it too.
            raise TransientStepError("The authorizer's new key is not active yet; flushing its cache later.")

    def collect_logs(self, endpoint: Endpoint) -> int:
        return cloud_logs.collect_logs(endpoint)

    def collect_shadow_pairs(self, shadow: Shadow) -> int:
        return shadow_capture.collect_shadow_pairs(shadow)

    # The public API cannot reach rdeploy: its calls to a stopped endpoint are counted in CloudWatch.
    public_calls_since = staticmethod(public_api.public_calls_since)
