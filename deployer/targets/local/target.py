"""The ``local`` target's operations: options, the rollout, shadow and teardown steps
(``STEPS``), invocation through the runtime's socket and log collection; supervision
and reaping are in ``supervision``. See the package's docstring for the design."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from django.conf import settings

from deployer.integrations.containers import cli, images, runtime_http, runtimes
from deployer.model_files import model_version_materialize
from deployer.models import Deployment, Endpoint, ExternalResource
from deployer.targets.base import (
    ROUTE_CACHE_SECONDS,
    STOP_OPTIONS,
    InvocationResult,
    PermanentStepError,
    RuntimeUnavailable,
    StepContext,
    StepOutcome,
    Target,
    TargetOptionsError,
    TransientStepError,
    check_stop_options,
)
from deployer.targets.local.image import runtime_image
from deployer.targets.local.logs import keep_last_logs, last_lines
from deployer.targets.local.paths import (
    IMAGE_BUILD_DIR,
    container_name,
    endpoint_dir,
    rollout_dir,
    socket_dir,
    socket_pool_key,
)
from deployer.targets.local.runtime import (
    DEFAULT_MEMORY_MB,
    DEFAULT_OPTIONS,
    START_SOCKET_WAIT,
    example_request,
    foreign_container,
    lock_when_made,
    locked_socket,
    oom_note,
    ping,
    runtime_request,
    start_container,
)
from deployer.targets.local.supervision import reap_removed_runtimes, supervise

logger = logging.getLogger(__name__)

# The previous runtime stops this long after the switch: every web process has seen the
# new route by then, and requests already sent to the old runtime have had time to finish.
DRAIN_SECONDS = ROUTE_CACHE_SECONDS + 1.5
# A copy to a shadow must answer within this (the live route has 65 s): a hung shadow
# holds a web process's sender for seconds, not a minute (deployer/services/shadow_copies.py
# also drops a copy that waited longer than SHADOW_QUEUE_SECONDS for a sender).
SHADOW_INVOKE_SECONDS = 5.0
SHADOW_QUEUE_SECONDS = 2.0
# A shadow's runtime is removed this long after copies stopped going to it: every web
# process has seen that, and every copy already queued has been sent or dropped.
SHADOW_DRAIN_SECONDS = DRAIN_SECONDS + SHADOW_QUEUE_SECONDS + SHADOW_INVOKE_SECONDS


def _gateway_error(status: int, message: str) -> InvocationResult:
    """An answer of the gateway's own, shaped as its other errors (deployer/services/gateway.py)."""
    return InvocationResult(status, json.dumps({"message": message}).encode(), {"Content-Type": "application/json"})


class LocalTarget(Target):
    name = "local"

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        if "runner" in options:
            raise TargetOptionsError(
                "Option 'runner' is gone: every local endpoint now runs in a container of its serving image."
            )
        unknown = sorted(set(options) - {*DEFAULT_OPTIONS, "memory_mb", *STOP_OPTIONS})
        if unknown:
            raise TargetOptionsError(f"Unknown option(s) for the local target: {', '.join(unknown)}.")
        check_stop_options(options)
        # The operator's caps per endpoint: one core per R worker, and the container's memory.
        max_cpus, max_memory = settings.LOCAL_MAX_CPUS, settings.LOCAL_MAX_MEMORY_MB
        merged = {
            **DEFAULT_OPTIONS,
            "workers": min(int(DEFAULT_OPTIONS["workers"]), max_cpus),
            "memory_mb": min(DEFAULT_MEMORY_MB, max_memory),
            **options,
        }
        for key, low, high in (("workers", 1, 64), ("startup_timeout", 5, 3600), ("memory_mb", 256, 1024**2)):
            value = merged[key]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                unit = " of MiB" if key == "memory_mb" else ""
                raise TargetOptionsError(f"Option {key!r} must be a whole number{unit} from {low} to {high}.")
        if merged["workers"] > max_cpus:
            raise TargetOptionsError(
                f"Option 'workers' is at most {max_cpus} on this server: each R worker gets a CPU core, and "
                f"an endpoint may use at most {max_cpus} (RDEPLOY_LOCAL_MAX_CPUS)."
            )
        if merged["memory_mb"] > max_memory:
            raise TargetOptionsError(
                f"Option 'memory_mb' is at most {max_memory} MiB on this server "
                f"(RDEPLOY_LOCAL_MAX_MEMORY_MB, the most memory an endpoint may use)."
            )
        return merged

    def steps(self, kind: str, *, public: bool) -> list[str]:
        if kind == Deployment.Kind.DELETE:
            return ["stop_runtime", "remove_files"]
        if kind == Deployment.Kind.STOP:
            return ["stop_runtime"]
        if kind == Deployment.Kind.START:
            return ["resume_runtime", "wait_healthy", "smoke_test", "switch_traffic"]
        if kind == Deployment.Kind.SHADOW:
            return ["prepare_model_dir", "start_runtime", "wait_healthy", "smoke_test", "route_shadow"]
        if kind == Deployment.Kind.PROMOTE:
            return ["adopt_shadow", "switch_traffic", "stop_previous"]
        if kind == Deployment.Kind.END_SHADOW:
            return ["unroute_shadow", "stop_shadow"]
        return ["prepare_model_dir", "start_runtime", "wait_healthy", "smoke_test", "switch_traffic", "stop_previous"]

    def run_step(self, name: str, ctx: StepContext) -> StepOutcome:
        step = self.STEPS.get(name)
        if step is None:
            raise PermanentStepError(f"The local target has no step {name!r}.")
        return step(self, ctx)

    # --- rollout steps ----------------------------------------------------------------
    def _prepare_model_dir(self, ctx: StepContext) -> StepOutcome:
        # Model code runs only in containers: without an engine nothing is prepared.
        if problem := cli.engine_problem():
            raise PermanentStepError(f"Local endpoints run in containers, and {problem}.")
        model_dir = rollout_dir(ctx.deployment) / "model"
        complete = model_dir.parent / ".model-complete"
        ctx.record_resource(ExternalResource.Kind.MODEL_DIR, str(model_dir.parent))
        if complete.exists():
            return StepOutcome.skipped("The model directory is already prepared.")
        model_version_materialize(model_version=ctx.model_version, destination=model_dir)
        complete.touch()
        return StepOutcome.done(f"Prepared {ctx.model_version} for the runtime.")

    def _start_runtime(self, ctx: StepContext) -> StepOutcome:
        if running := self._already_running(ctx):
            return running
        image = runtime_image(ctx)
        if isinstance(image, StepOutcome):
            return image
        return self._run_container(ctx, image=image, directory=rollout_dir(ctx.deployment))

    def _resume_runtime(self, ctx: StepContext) -> StepOutcome:
        """Start: a new container of the serving rollout's image on its model directory,
        both kept by the stop; nothing is built or prepared again."""
        if running := self._already_running(ctx):
            return running
        served = ctx.previous
        kept = (
            ExternalResource.objects.filter(deployment=served, kind=ExternalResource.Kind.CONTAINER)
            .order_by("id")
            .first()
            if served is not None
            else None
        )
        # The kept container's own directory: a promoted shadow's is its shadow rollout's.
        directory = Path(kept.details["directory"]) if kept is not None else None
        if kept is None or directory is None or not (directory / ".model-complete").exists():
            raise PermanentStepError(
                "What this endpoint served before is gone (its image or model directory); deploy a version again."
            )
        return self._run_container(ctx, image=kept.details["image"], directory=directory)

    def _already_running(self, ctx: StepContext) -> StepOutcome | None:
        name = container_name(ctx.deployment)
        # Only a container this step recorded counts: one of that name without a record is
        # not this rollout's (another data directory's, say), and start() replaces it.
        current = runtimes.state(name) if ctx.is_recorded(ExternalResource.Kind.CONTAINER, name) else None
        if current is not None and current.running:
            return StepOutcome.skipped(f"The runtime already runs in container {name}.")
        return None

    def _run_container(self, ctx: StepContext, *, image: str, directory: Path) -> StepOutcome:
        name = container_name(ctx.deployment)
        resource = ctx.record_resource(
            ExternalResource.Kind.CONTAINER, name, {"directory": str(directory), "start": 0, "image": image}
        )
        try:
            start_container(
                name=name, image=image, deployment=ctx.deployment, directory=directory, start=0, options=ctx.options
            )
        except runtimes.ForeignContainer as exc:
            raise foreign_container(exc) from exc
        # Taken back before the model's code, loading beside HAProxy, has long to write
        # there; wait_healthy locks it if the runtime is slower than this.
        lock_when_made(socket_dir(directory, 0), resource, wait=START_SOCKET_WAIT)
        return StepOutcome.done(f"Started the R runtime in container {name} of {image}.")

    def _container(self, ctx: StepContext) -> ExternalResource:
        return ctx.resource(ExternalResource.Kind.CONTAINER)

    def _wait_healthy(self, ctx: StepContext) -> StepOutcome:
        resource = self._container(ctx)
        name = resource.identifier
        details = resource.details
        socket_path = locked_socket(socket_dir(Path(details["directory"]), details["start"]), resource)
        if socket_path is not None and ping(socket_path):
            if details.get("socket") != socket_path:
                ctx.update_resource_details(resource, socket=socket_path)
            return StepOutcome.done(f"The runtime answered /ping after {ctx.elapsed():.1f} s.")
        current = runtimes.state(name)
        if current is None or not current.running:
            status = f" with status {current.exit_code}" if current is not None else ""
            raise PermanentStepError(
                f"The R runtime exited{status} before it became healthy{oom_note(current)}. "
                f"Its last log lines:\n{last_lines(name)}"
            )
        timeout = ctx.options.get("startup_timeout", DEFAULT_OPTIONS["startup_timeout"])
        if ctx.elapsed() > timeout:
            raise PermanentStepError(
                f"The R runtime did not answer /ping within {timeout} s. Its last log lines:\n{last_lines(name)}"
            )
        return StepOutcome.wait(0.2, "Waiting for the runtime to load the model.")

    def _smoke_test(self, ctx: StepContext) -> StepOutcome:
        example = example_request(ctx.model_version.inspection)
        if example is None:
            return StepOutcome.skipped("The model has no example payload to try.")
        body, content_type = example
        resource = self._container(ctx)
        try:
            response = runtime_request(
                resource.details["socket"],
                "POST",
                "/invocations",
                body=body,
                headers={"Content-Type": content_type, "Accept": "application/json"},
            )
        except runtime_http.RuntimeHTTPError as exc:
            raise TransientStepError(str(exc)) from exc
        if response.status != 200:
            raise PermanentStepError(
                f"The test prediction with the model's example payload failed with HTTP {response.status}: "
                f"{response.data.decode('utf-8', 'replace')[:500]}\n"
                f"The runtime's last log lines:\n{last_lines(resource.identifier)}"
            )
        return StepOutcome.done(f"Test prediction: {response.data.decode('utf-8', 'replace')[:200]}")

    def _switch_traffic(self, ctx: StepContext) -> StepOutcome:
        resource = self._container(ctx)
        if ctx.endpoint.runtime.get("container") != resource.identifier:
            ctx.set_runtime(
                container=resource.identifier, socket=resource.details["socket"], deployment=ctx.deployment.pk
            )
        if "switched_at" not in ctx.intent:
            ctx.intent["switched_at"] = time.time()
            ctx.save_intent()
        return StepOutcome.done(f"Traffic goes to {ctx.model_version} in container {resource.identifier}.")

    def _stop_previous(self, ctx: StepContext) -> StepOutcome:
        previous = [
            resource
            for resource in ctx.live_resources()
            if resource.deployment_id != ctx.deployment.pk
            and resource.kind in (ExternalResource.Kind.CONTAINER, ExternalResource.Kind.MODEL_DIR)
        ]
        if not previous:
            return StepOutcome.skipped("No previous runtime to stop.")
        switched_at = ctx.deployment.steps.get(name="switch_traffic").intent.get("switched_at", 0)
        remaining = switched_at + DRAIN_SECONDS - time.time()
        if remaining > 0:
            return StepOutcome.wait(remaining, "Letting requests to the previous runtime finish.")
        for resource in previous:
            self._remove(ctx, resource)
        return StepOutcome.done("Stopped the previous runtime.")

    # --- shadow steps -----------------------------------------------------------------
    def _route_shadow(self, ctx: StepContext) -> StepOutcome:
        resource = self._container(ctx)
        runtime = {
            "container": resource.identifier,
            "socket": resource.details["socket"],
            "timeout": SHADOW_INVOKE_SECONDS,
            "queue_seconds": SHADOW_QUEUE_SECONDS,
            # Its own connection pool: the live runtime's is not closed by each copy.
            "pool": "shadow",
        }
        if ctx.endpoint.shadow_runtime.get("runtime") != runtime:
            ctx.set_shadow_runtime(runtime=runtime)
        return StepOutcome.done(f"Copies of live requests go to {ctx.model_version} in {resource.identifier}.")

    def _adopt_shadow(self, ctx: StepContext) -> StepOutcome:
        ctx.adopt_shadow_resources()
        # The shadow's runtime becomes the live one: no copies to it from now on.
        if ctx.endpoint.shadow_runtime:
            ctx.set_shadow_runtime()
        resource = self._container(ctx)
        name = resource.identifier
        current = runtimes.state(name)
        if current is None or not current.running:
            raise PermanentStepError(
                f"The shadow's runtime {name} is not running{oom_note(current)}, so it cannot take over; "
                f"{ctx.endpoint.model_version} still serves. Its last log lines:\n{last_lines(name)}"
            )
        socket_path = resource.details.get("socket")
        if not socket_path or not ping(socket_path):
            raise TransientStepError(f"The shadow's runtime {name} does not answer /ping yet.")
        return StepOutcome.done(f"Took over the shadow's runtime {name}: nothing is started again.")

    def _unroute_shadow(self, ctx: StepContext) -> StepOutcome:
        if ctx.endpoint.shadow_runtime:
            ctx.set_shadow_runtime()
        if "unrouted_at" not in ctx.intent:
            ctx.intent["unrouted_at"] = time.time()
            ctx.save_intent()
        return StepOutcome.done("Copies of live requests no longer go to the shadow.")

    def _stop_shadow(self, ctx: StepContext) -> StepOutcome:
        shadow = self._shadow_resources(ctx)
        if not shadow:
            return StepOutcome.skipped("The shadow's runtime is already removed.")
        unrouted_at = ctx.deployment.steps.get(name="unroute_shadow").intent.get("unrouted_at", 0)
        remaining = unrouted_at + SHADOW_DRAIN_SECONDS - time.time()
        if remaining > 0:
            return StepOutcome.wait(remaining, "Letting the copies already sent to the shadow finish.")
        for resource in reversed(shadow):
            self._remove(ctx, resource)
        return StepOutcome.done("Removed the shadow's runtime and its model directory.")

    def _shadow_resources(self, ctx: StepContext) -> list[ExternalResource]:
        """The container and model directory of the shadow an end_shadow deployment ends,
        never what serves."""
        shadow = ctx.shadow
        if shadow is None:
            return []
        serving = ctx.endpoint.runtime.get("container")
        return [
            resource
            for resource in ctx.deployment_resources(shadow.deployment)
            if resource.kind in (ExternalResource.Kind.CONTAINER, ExternalResource.Kind.MODEL_DIR)
            and resource.identifier != serving
        ]

    def _remove(self, ctx: StepContext, resource: ExternalResource) -> None:
        if resource.kind == ExternalResource.Kind.CONTAINER:
            # Its last lines go with the container: keep them first.
            keep_last_logs(ctx.endpoint, resource)
            runtimes.stop(resource.identifier)
        elif resource.kind == ExternalResource.Kind.MODEL_DIR:
            # The serving image's build, if one still runs for this rollout.
            images.remove_job(Path(resource.identifier) / IMAGE_BUILD_DIR)
            shutil.rmtree(resource.identifier, ignore_errors=True)
        ctx.mark_resource_deleted(resource.kind, resource.identifier)

    def discard(self, ctx: StepContext) -> None:
        serving = ctx.endpoint.runtime.get("container")
        resources = list(ctx.deployment_resources())
        if ctx.deployment.kind in (*Deployment.SHADOW_KINDS, Deployment.Kind.PROMOTE):
            # Whatever failed, the shadow is over: no copy goes to what is removed here.
            if ctx.endpoint.shadow_runtime:
                ctx.set_shadow_runtime()
            if ctx.deployment.kind == Deployment.Kind.END_SHADOW:
                resources = self._shadow_resources(ctx)
        for resource in reversed(resources):
            if resource.identifier != serving:
                self._remove(ctx, resource)

    # --- teardown ---------------------------------------------------------------------
    def _stop_runtime(self, ctx: StepContext) -> StepOutcome:
        ctx.set_runtime()
        # A shadow's container is one of the endpoint's too, removed below.
        if ctx.endpoint.shadow_runtime:
            ctx.set_shadow_runtime()
        for resource in ctx.live_resources().filter(kind=ExternalResource.Kind.CONTAINER):
            self._remove(ctx, resource)
        return StepOutcome.done("Stopped the runtime.")

    def _remove_files(self, ctx: StepContext) -> StepOutcome:
        for resource in ctx.live_resources().filter(kind=ExternalResource.Kind.MODEL_DIR):
            self._remove(ctx, resource)
        shutil.rmtree(endpoint_dir(ctx.endpoint.name), ignore_errors=True)
        return StepOutcome.done("Removed the endpoint's files.")

    # Every step of every kind, by the name the pipeline persists.
    STEPS: ClassVar[dict[str, Callable[[LocalTarget, StepContext], StepOutcome]]] = {
        "prepare_model_dir": _prepare_model_dir,
        "start_runtime": _start_runtime,
        "resume_runtime": _resume_runtime,
        "wait_healthy": _wait_healthy,
        "smoke_test": _smoke_test,
        "switch_traffic": _switch_traffic,
        "stop_previous": _stop_previous,
        "route_shadow": _route_shadow,
        "adopt_shadow": _adopt_shadow,
        "unroute_shadow": _unroute_shadow,
        "stop_shadow": _stop_shadow,
        "stop_runtime": _stop_runtime,
        "remove_files": _remove_files,
    }

    # --- serving ----------------------------------------------------------------------
    def invoke(self, runtime: Mapping[str, Any], body: bytes, headers: Mapping[str, str]) -> InvocationResult:
        """``runtime``: the live route's facts, or a shadow's (route_shadow), which add its
        own deadline (``timeout``) and connection pool (``pool``)."""
        socket_path = runtime.get("socket")
        if not socket_path:
            raise RuntimeUnavailable("the endpoint has no running runtime")
        seconds = float(runtime.get("timeout") or runtime_http.INVOCATION_SECONDS)
        pool_key = socket_pool_key(str(socket_path))
        if pool := runtime.get("pool"):
            pool_key = f"{pool_key}#{pool}"
        try:
            response = runtime_http.request(
                str(socket_path), "POST", "/invocations", body=body, headers=headers, timeout=seconds, pool_key=pool_key
            )
        except runtime_http.DeadlineExceeded:
            return _gateway_error(504, f"The model did not answer within {seconds:g} seconds.")
        except runtime_http.ResponseTooLarge:
            return _gateway_error(502, f"The model's answer is larger than {runtime_http.MAX_RESPONSE_BYTES} bytes.")
        except runtime_http.RuntimeHTTPError as exc:
            raise RuntimeUnavailable(str(exc)) from exc
        return InvocationResult(
            status=response.status,
            body=response.data,
            headers={
                name: value
                for name in ("Content-Type", "X-Amzn-SageMaker-Custom-Attributes")
                if (value := response.headers.get(name.lower())) is not None
            },
        )

    # --- supervision (deployer/targets/local/supervision.py) -----------------------------
    def check(self, endpoint: Endpoint) -> None:
        supervise(endpoint, target=self.name)

    def reap(self) -> int:
        return reap_removed_runtimes(target=self.name)

    def collect_logs(self, endpoint: Endpoint) -> int:
        # The reconciler supervises the endpoint (check) after this: a log that cannot be
        # read must not stop that.
        return sum(
            keep_last_logs(endpoint, resource)
            for resource in ExternalResource.objects.live().of_endpoint(endpoint, ExternalResource.Kind.CONTAINER)
        )
