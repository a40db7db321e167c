"""The ``sagemaker`` target: the R runtime image in ECR, the model as data in S3, a SageMaker
model + endpoint config + endpoint, and optionally a public API (API Gateway + Lambda).

Names derive from the installation prefix, the endpoint name and the deployment id, so a
step rerun after a crash finds what it created. Per rollout: a SageMaker model and an
endpoint config (``<prefix>-<endpoint>-d<deployment>``). Per endpoint, reused by every
rollout: the SageMaker endpoint and the public API. Shared by content: model data
(``<prefix>/model-data/<model directory digest>/model.tar.gz``) and images (tagged by the build context's
content hash; a new model version needing the same R packages builds nothing).

Every AWS call goes through ``deployer.integrations.aws``; see docs/sagemaker.md.
"""

from __future__ import annotations

import gzip
import hashlib
import platform
import secrets
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from deployer.build_context import PUBLIC_BASE_IMAGE, BuildContext
from deployer.integrations.aws import (
    apigateway,
    autoscaling,
    cloudwatch,
    codebuild,
    ecr,
    iam,
    lambda_,
    logs,
    s3,
    sagemaker,
    tagging,
)
from deployer.integrations.aws.client import AwsConfigurationError, AwsError, AwsUnreachable
from deployer.integrations.aws.tagging import CloudResource, resource_tags
from deployer.integrations.containers import cli, images
from deployer.models import Deployment, Endpoint, ExternalResource, LogLine, ModelVersion
from deployer.services.images import local_image, model_version_image_context
from deployer.services.model_versions import model_version_directory_digest, model_version_materialize
from deployer.targets.base import (
    InvocationResult,
    PermanentStepError,
    RuntimeUnavailable,
    StepContext,
    StepOutcome,
    Target,
    TargetOptionsError,
    TransientStepError,
)

VARIANT = "main"
STAGE = "v1"
HANDLER_FILE = Path(settings.BASE_DIR) / "container_templates" / "lambda" / "handler.py"
# API Gateway gives a REST integration at most 29 s; the function gets the same.
LAMBDA_TIMEOUT = 29
# How often waiting steps poll, and how long an endpoint may take to come up beyond its
# own startup health-check window (instances are provisioned first).
POLL_SECONDS = 20.0
BUILD_POLL_SECONDS = 15.0
# A local engine's build output is a file here: poll it more often than CodeBuild.
DOCKER_POLL_SECONDS = 5.0
# SageMaker's instances (and CodeBuild's image) are x86_64.
SAGEMAKER_PLATFORM = "linux/amd64"
SAGEMAKER_ARCHITECTURE = "amd64"
MAX_BUILD_LINES_PER_POLL = 2000
PROVISIONING_ALLOWANCE = 30 * 60
UPDATE_VISIBLE_SECONDS = 120
# Images no endpoint uses any more are removed by `rdeploy_gc --delete` after this long:
# redeploying a recently deleted model should not rebuild.
IMAGE_GRACE_SECONDS = 7 * 24 * 3600
LOG_LINES_IN_FAILURE = 20
MAX_LOG_LINES_PER_COLLECT = 1000
LOG_COLLECT_INTERVAL = 10
# rdeploy creates the log groups SageMaker, Lambda and CodeBuild write to, so they carry
# its tags and do not keep lines forever; the endpoint's lines are copied into its log.
LOG_RETENTION_DAYS = 30

# Resources that belong to the endpoint (reused across rollouts) rather than to one rollout.
PER_ENDPOINT_KINDS = frozenset(
    {
        "sagemaker_endpoint",
        "autoscaling_target",
        "iam_role",
        "lambda_function",
        "apigateway_api_key",
        "apigateway_rest_api",
        "apigateway_usage_plan",
        "cloudwatch_alarm",
        "log_group",
    }
)
SHARED_KINDS = frozenset({"model_data", "ecr_image"})

_DEFAULTS: dict[str, Any] = {
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


# --- names and settings ---------------------------------------------------------------
def _name(*parts: str, limit: int = 63) -> str:
    """Join ``parts`` with hyphens; too long names keep a hash of the full name."""
    name = "-".join(parts)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def prefix() -> str:
    return str(settings.RDEPLOY_RESOURCE_PREFIX)


def endpoint_name(endpoint: Endpoint) -> str:
    return _name(prefix(), endpoint.name)


def rollout_name(deployment: Deployment) -> str:
    """The SageMaker model and endpoint config of one rollout."""
    return _name(prefix(), deployment.endpoint.name, f"d{deployment.pk}")


def function_name(endpoint: Endpoint) -> str:
    return _name(prefix(), endpoint.name, limit=64)


def role_name(endpoint: Endpoint) -> str:
    return _name(prefix(), endpoint.name, "invoke", limit=64)


def endpoint_log_group(endpoint: Endpoint) -> str:
    """Where SageMaker writes the endpoint's container output."""
    return f"/aws/sagemaker/Endpoints/{endpoint_name(endpoint)}"


def function_log_group(endpoint: Endpoint) -> str:
    """Where Lambda writes the public API function's output."""
    return f"/aws/lambda/{function_name(endpoint)}"


def build_log_group() -> str:
    """The installation's CodeBuild project's group (one stream per build)."""
    return f"/aws/codebuild/{_name(prefix(), 'image-builder')}"


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
            name=_name(name, "5xx", limit=255),
            metric="Invocation5XXErrors",
            statistic="Sum",
            threshold=float(rollback["errors_per_minute"]),
            period=60,
            evaluation_periods=1,
            description=f"rdeploy: {name} answers 5xx errors; rolls a blue/green update back.",
        ),
        cloudwatch.VariantAlarm(
            name=_name(name, "latency", limit=255),
            metric="ModelLatency",
            statistic="Average",
            threshold=float(rollback["latency_ms"]) * 1000,
            period=60,
            evaluation_periods=int(rollback["latency_minutes"]),
            description=f"rdeploy: {name} predicts slowly; rolls a blue/green update back.",
        ),
    ]


def _required(setting: str) -> str:
    value = getattr(settings, setting, None)
    if not value:
        raise PermanentStepError(
            f"The SageMaker target needs the {setting} setting, which is not set. "
            "Ask the administrator to configure it (see docs/sagemaker.md)."
        )
    return str(value)


def _region() -> str:
    if not settings.AWS_REGION:
        raise PermanentStepError("The SageMaker target needs AWS_DEFAULT_REGION (or AWS_REGION), which is not set.")
    return str(settings.AWS_REGION)


def _tags(ctx: StepContext) -> dict[str, str]:
    return resource_tags(settings.INSTALLATION_ID, endpoint=ctx.endpoint.name, deployment=ctx.deployment.pk)


def _details(ctx: StepContext, kind: str) -> dict[str, Any]:
    resource = ExternalResource.objects.get(
        target=Endpoint.Target.SAGEMAKER, kind=kind, identifier=ctx.resource_id(kind)
    )
    return dict(resource.details)


def _s3_location(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def model_data_tarball(directory: Path, destination: Path) -> None:
    """``model.tar.gz`` with sorted entries and zeroed times/owners: same content, same bytes."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with (
        destination.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for path in sorted(directory.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(directory)), recursive=False, filter=clean)


def image_build_context(model_version: ModelVersion) -> BuildContext:
    """The serving image's build context for the model version (its R packages, and the
    bundle's renv.lock when it has one), on the base the configured builder has: this
    machine's (settings.BASE_IMAGE) for RDEPLOY_IMAGE_BUILDER=docker, so the image pushed is
    the one local endpoints run; a public Debian image on CodeBuild."""
    base = settings.BASE_IMAGE if settings.RDEPLOY_IMAGE_BUILDER == "docker" else PUBLIC_BASE_IMAGE
    try:
        return model_version_image_context(model_version=model_version, base_image=base)
    except ValueError as error:
        raise PermanentStepError(f"No image can be built for this model: {error}.") from error


def docker_build_dir(identifier: str) -> Path:
    """Where a local engine's build keeps its context, output and registry login."""
    return Path(settings.DATA_DIR) / "image-builds" / identifier


def _context_zip(context: BuildContext, destination: Path) -> None:
    """The build context as the zip CodeBuild's S3 source expects (fixed order and times)."""
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(context.files):
            content, mode = context.files[path]
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            archive.writestr(info, content)


def _other_user(kind: str, identifier: str, endpoint: Endpoint) -> Deployment | None:
    """A deployment of another endpoint still relying on this shared resource, if any."""
    return (
        Deployment.objects.filter(**{f"resources__{kind}": identifier})
        .exclude(endpoint=endpoint)
        .exclude(endpoint__status__in=[Endpoint.Status.DELETED, Endpoint.Status.DELETING])
        .exclude(status=Deployment.Status.FAILED)
        .select_related("endpoint")
        .order_by("-id")
        .first()
    )


class SageMakerTarget(Target):
    name = "sagemaker"
    build_steps = frozenset({"upload_model_data", "build_image"})
    # An update changes the endpoint in place: InService on the new config, it serves.
    switches_traffic_at = {"create": "switch_traffic", "update": "wait_in_service", "rollback": "wait_in_service"}

    # --- options --------------------------------------------------------------------
    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        known = {*_DEFAULTS, "serverless", "autoscaling", "throttle", "rollback", "rollback_alarms"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TargetOptionsError(
                f"Unknown SageMaker option(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
            )
        result = {**_DEFAULTS, **options}

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
        public_steps = ["public_function", "public_api"] if public else []
        return [
            "upload_model_data",
            "build_image",
            "create_model",
            "deploy_endpoint",
            "wait_in_service",
            "autoscaling",
            *public_steps,
            "switch_traffic",
            "retire_previous",
        ]

    def run_step(self, name: str, ctx: StepContext) -> StepOutcome:
        step = getattr(self, f"_step_{name}", None)
        if step is None:
            raise PermanentStepError(f"Unknown SageMaker step {name!r}.")
        try:
            outcome: StepOutcome = step(ctx)
        except AwsConfigurationError as error:
            raise PermanentStepError(str(error)) from error
        except AwsError as error:
            if error.transient:
                raise TransientStepError(
                    f"AWS is throttling or unavailable ({error.code or error.message}); retrying."
                ) from error
            raise PermanentStepError(f"AWS refused {name.replace('_', ' ')}: {error.code}: {error.message}") from error
        return outcome

    # --- rollout steps ----------------------------------------------------------------
    def _step_upload_model_data(self, ctx: StepContext) -> StepOutcome:
        bucket = _required("RDEPLOY_S3_BUCKET")
        model_version = ctx.model_version
        key = f"{prefix()}/model-data/{model_version_directory_digest(model_version)}/model.tar.gz"
        uri = f"s3://{bucket}/{key}"
        ctx.record_resource("model_data", uri)
        if s3.object_exists(bucket, key):
            return StepOutcome.skipped(f"Model data already in S3 ({uri}).")
        scratch = Path(settings.DATA_DIR) / "tmp"
        with tempfile.TemporaryDirectory(dir=scratch, prefix="sagemaker-model-") as tmp:
            model_dir = model_version_materialize(model_version=model_version, destination=Path(tmp) / "model")
            tarball = Path(tmp) / "model.tar.gz"
            model_data_tarball(model_dir, tarball)
            s3.upload_file(bucket, key, tarball, tags=_tags(ctx))
            size = tarball.stat().st_size
        return StepOutcome.done(f"Uploaded the model data to {uri} ({size} bytes).")

    def _step_build_image(self, ctx: StepContext) -> StepOutcome:
        repository = str(settings.RDEPLOY_ECR_REPOSITORY)
        context: BuildContext | None = None
        tag = ctx.intent.get("tag")
        if not tag:
            # Rendering may unpack a bundle (for its renv.lock): once per rollout, not per poll.
            context = image_build_context(ctx.model_version)
            tag = context.tag
            ctx.intent["tag"] = tag
            ctx.save_intent()
        installation_tags = resource_tags(settings.INSTALLATION_ID)
        repository_uri = ecr.ensure_repository(repository, tags=installation_tags)
        image = f"{repository_uri}:{tag}"
        ctx.record_resource("ecr_image", f"{repository}:{tag}", {"uri": image, "unused_since": None})
        if ecr.image_exists(repository, tag):
            if ctx.intent.get("docker"):
                # Our push finished between two polls (or a concurrent build pushed the same tag).
                self._remove_docker_build(ctx)
                return StepOutcome.done(f"Built and pushed {image} with {settings.CONTAINER_CLI}.")
            return StepOutcome.skipped(f"Image {tag} is already in ECR: the same R packages need no build.")
        if settings.RDEPLOY_IMAGE_BUILDER == "docker":
            return self._build_with_docker(ctx, context=context, image=image, repository=repository, tag=tag)
        build_id = ctx.intent.get("build_id")
        if not build_id:
            context = context or image_build_context(ctx.model_version)
            bucket = _required("RDEPLOY_S3_BUCKET")
            role = _required("RDEPLOY_CODEBUILD_ROLE_ARN")
            key = f"{prefix()}/build-context/{tag}.zip"
            ctx.record_resource("build_context", f"s3://{bucket}/{key}")
            if not s3.object_exists(bucket, key):
                with tempfile.TemporaryDirectory(dir=Path(settings.DATA_DIR) / "tmp") as tmp:
                    archive = Path(tmp) / "context.zip"
                    _context_zip(context, archive)
                    s3.upload_file(bucket, key, archive, tags=_tags(ctx))
            project = _name(prefix(), "image-builder")
            # The installation's, like the project: builds of every endpoint log there.
            logs.ensure_log_group(build_log_group(), tags=installation_tags, retention_days=LOG_RETENTION_DAYS)
            codebuild.ensure_project(project, role_arn=role, source_location=f"{bucket}/{key}", tags=installation_tags)
            # Same token within 5 minutes = same build: a start retried after a crash.
            token = hashlib.sha256(f"{project}:{ctx.deployment.pk}:{tag}".encode()).hexdigest()
            build_id = codebuild.start_build(
                project,
                source_location=f"{bucket}/{key}",
                image_uri=image,
                base_image=context.base_image,
                idempotency_token=token,
            )
            ctx.intent.update(build_id=build_id, log_ms=0)
            ctx.save_intent()
            ctx.log(f"CodeBuild build {build_id} started for image {tag}.", source=LogLine.Source.BUILD)
        state = codebuild.build_state(str(build_id))
        self._stream_build_logs(ctx, state)
        if state.status == "IN_PROGRESS":
            return StepOutcome.wait(BUILD_POLL_SECONDS, f"Building the image ({state.phase or 'queued'}).")
        self._remove_build_context(ctx)
        if state.status == "SUCCEEDED":
            return StepOutcome.done(f"Built and pushed {image}.")
        if ecr.image_exists(repository, tag):
            # Tags are immutable: a build for another endpoint pushed the same image first.
            return StepOutcome.done(f"Image {tag} was pushed by a concurrent build.")
        tail = ""
        if state.log_group:
            tail = "\n".join(logs.last_lines(state.log_group, count=LOG_LINES_IN_FAILURE))
        raise PermanentStepError(
            f"The image build {state.status.lower()}: {state.failure or 'see the build log'}."
            + (f"\nLast build log lines:\n{tail}" if tail else "")
        )

    def _build_with_docker(
        self, ctx: StepContext, *, context: BuildContext | None, image: str, repository: str, tag: str
    ) -> StepOutcome:
        """The image from this worker's engine (RDEPLOY_IMAGE_BUILDER=docker), pushed to ECR:
        the local serving image of the same context when the engine has it (the very image
        inspection and local endpoints ran), else a build of it. Build and push are detached
        jobs polled every DOCKER_POLL_SECONDS."""
        job = ctx.intent.get("docker")
        if job is None:
            identifier = _name(prefix(), "image-build", f"d{ctx.deployment.pk}")
            directory = docker_build_dir(identifier)
            ctx.record_resource("docker_build", identifier, {"directory": str(directory)})
            context = context or image_build_context(ctx.model_version)
            local = local_image(context)
            try:
                if images.image_present(local) and images.architecture(local) == SAGEMAKER_ARCHITECTURE:
                    images.tag(local, image)
                    ctx.log(f"Pushing {local}, the image built on this machine.", source=LogLine.Source.BUILD)
                    return self._start_push(ctx, job={"identifier": identifier}, image=image)
                # The local name too where SageMaker's platform is this machine's.
                also_local = [local] if platform.machine() in ("x86_64", "amd64") else []
                started = images.start_build(
                    directory=directory, context=context, tags=[image, *also_local], platform=SAGEMAKER_PLATFORM
                )
            except cli.EngineUnavailable as error:
                raise PermanentStepError(
                    f"RDEPLOY_IMAGE_BUILDER=docker, but {error}. Install podman or Docker on the workers, "
                    "or use codebuild."
                ) from error
            except cli.EngineCommandFailed as error:
                raise TransientStepError(str(error)) from error
            job = {"identifier": identifier, "phase": started.phase, "pid": started.pid, "ticks": started.start_ticks}
            ctx.intent.update(docker=job, log_offset=0)
            ctx.save_intent()
            ctx.log(f"Build of image {tag} started on this worker.", source=LogLine.Source.BUILD)
        directory = docker_build_dir(job["identifier"])
        state = images.job_state(images.Job(directory, job["phase"], job["pid"], job["ticks"]))
        self._stream_docker_output(ctx, directory)
        if state.running:
            doing = "Building the image" if job["phase"] == "build" else "Pushing the image to ECR"
            return StepOutcome.wait(DOCKER_POLL_SECONDS, f"{doing}.")
        if state.exit_code is None:
            # Gone without an exit status (the machine restarted): build again.
            del ctx.intent["docker"]
            ctx.save_intent()
            raise TransientStepError(f"The image {job['phase']} stopped without an exit status; starting it again.")
        if state.exit_code != 0:
            tail = "\n".join(images.last_output(directory, lines=LOG_LINES_IN_FAILURE))
            self._remove_docker_build(ctx)
            if ecr.image_exists(repository, tag):
                return StepOutcome.done(f"Image {tag} was pushed by a concurrent build.")
            raise PermanentStepError(
                f"The image build failed: {settings.CONTAINER_CLI} {job['phase']} exited with status "
                f"{state.exit_code}." + (f"\nLast build log lines:\n{tail}" if tail else "")
            )
        if job["phase"] == "build":
            return self._start_push(ctx, job=job, image=image)
        self._remove_docker_build(ctx)
        return StepOutcome.done(f"Built and pushed {image} with {settings.CONTAINER_CLI}.")

    def _start_push(self, ctx: StepContext, *, job: dict[str, Any], image: str) -> StepOutcome:
        """Log in to ECR (the password on stdin) and start pushing ``image``."""
        directory = docker_build_dir(job["identifier"])
        username, password, registry = ecr.docker_login()
        try:
            images.login(directory=directory, registry=registry, username=username, password=password)
            started = images.start_push(directory=directory, image=image)
        except cli.EngineCommandFailed as error:
            raise TransientStepError(str(error)) from error
        ctx.intent.update(docker={**job, "phase": started.phase, "pid": started.pid, "ticks": started.start_ticks})
        ctx.intent.setdefault("log_offset", 0)
        ctx.save_intent()
        ctx.log(f"Pushing {image}.", source=LogLine.Source.BUILD)
        return StepOutcome.wait(DOCKER_POLL_SECONDS, "Pushing the image to ECR.")

    def _stream_docker_output(self, ctx: StepContext, directory: Path) -> None:
        offset = int(ctx.intent.get("log_offset", 0))
        lines, new_offset = images.read_output(directory, offset)
        if new_offset == offset:
            return
        skipped = max(0, len(lines) - MAX_BUILD_LINES_PER_POLL)
        messages = ([f"… {skipped} build log lines skipped"] if skipped else []) + lines[skipped:]
        LogLine.objects.bulk_create(
            LogLine(endpoint=ctx.endpoint, deployment=ctx.deployment, source=LogLine.Source.BUILD, message=message)
            for message in messages
        )
        ctx.intent["log_offset"] = new_offset
        ctx.save_intent()

    def _remove_docker_build(self, ctx: StepContext) -> None:
        identifier = ctx.deployment.resources.get("docker_build")
        if identifier:
            delete_cloud_resource("docker_build", identifier)
            ctx.mark_resource_deleted("docker_build", identifier)

    def _stream_build_logs(self, ctx: StepContext, state: codebuild.BuildState) -> None:
        if not state.log_group:
            return
        start = int(ctx.intent.get("log_ms", 0))
        events = logs.events_since(state.log_group, start_ms=start, stream=state.log_stream)
        for event in events:
            ctx.log(event.message.rstrip(), source=LogLine.Source.BUILD)
        if events:
            ctx.intent["log_ms"] = events[-1].timestamp + 1
            ctx.save_intent()

    def _remove_build_context(self, ctx: StepContext) -> None:
        uri = ctx.deployment.resources.get("build_context")
        if uri:
            s3.delete_object(*_s3_location(uri))
            ctx.mark_resource_deleted("build_context", uri)

    def _step_create_model(self, ctx: StepContext) -> StepOutcome:
        role = _required("RDEPLOY_SAGEMAKER_ROLE_ARN")
        name = rollout_name(ctx.deployment)
        image = _details(ctx, "ecr_image")["uri"]
        model_data = ctx.resource_id("model_data")
        ctx.record_resource("sagemaker_model", name)
        environment = {"RDEPLOY_MODEL_VERSION": str(ctx.model_version)}
        sagemaker.create_model(
            name, image=image, model_data_url=model_data, role_arn=role, environment=environment, tags=_tags(ctx)
        )
        return StepOutcome.done(f"SageMaker model {name} ({image}).")

    def _variant(self, ctx: StepContext, model: str) -> dict[str, Any]:
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
            InstanceType=options.get("instance_type", _DEFAULTS["instance_type"]),
            InitialInstanceCount=count,
            InitialVariantWeight=1.0,
            ContainerStartupHealthCheckTimeoutInSeconds=options.get("startup_timeout", 600),
            ModelDataDownloadTimeoutInSeconds=options.get("startup_timeout", 600),
        )
        return variant

    def _step_deploy_endpoint(self, ctx: StepContext) -> StepOutcome:
        model = ctx.resource_id("sagemaker_model")
        config = rollout_name(ctx.deployment)
        ctx.record_resource("sagemaker_endpoint_config", config)
        sagemaker.create_endpoint_config(config, variant=self._variant(ctx, model), tags=_tags(ctx))
        name = endpoint_name(ctx.endpoint)
        ctx.record_resource("sagemaker_endpoint", name)
        # Made before the endpoint, so SageMaker writes into a tagged group with a retention.
        self._ensure_log_group(ctx, endpoint_log_group(ctx.endpoint))
        state = sagemaker.describe_endpoint(name)
        if state is None:
            sagemaker.create_endpoint(name, config_name=config, tags=_tags(ctx))
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
        sagemaker.update_endpoint(name, config_name=config, deployment_config=self._blue_green(ctx, name))
        return StepOutcome.done(f"Updating SageMaker endpoint {name} to {config} (blue/green).")

    def _blue_green(self, ctx: StepContext, name: str) -> dict[str, Any]:
        """SageMaker starts the new fleet, shifts traffic, keeps the old fleet for the bake
        time and sends traffic back to it if an alarm fires meanwhile. rdeploy's own alarms
        are created (recorded first) before SageMaker is told to watch them."""
        alarm_names = []
        for alarm in rollback_alarms(ctx.endpoint, ctx.options):
            ctx.record_resource("cloudwatch_alarm", alarm.name)
            cloudwatch.ensure_variant_alarm(alarm, endpoint=name, variant=VARIANT, tags=_tags(ctx))
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

    def _ensure_log_group(self, ctx: StepContext, group: str) -> None:
        ctx.record_resource("log_group", group)
        logs.ensure_log_group(group, tags=_tags(ctx), retention_days=LOG_RETENTION_DAYS)

    def _failure(self, name: str, headline: str, reason: str) -> PermanentStepError:
        lines = logs.last_lines(f"/aws/sagemaker/Endpoints/{name}", count=LOG_LINES_IN_FAILURE)
        message = f"{headline}: {reason or 'SageMaker gave no reason'}"
        if lines:
            message += "\nLast lines of the endpoint's log:\n" + "\n".join(lines)
        return PermanentStepError(message)

    def _step_wait_in_service(self, ctx: StepContext) -> StepOutcome:
        name = endpoint_name(ctx.endpoint)
        config = rollout_name(ctx.deployment)
        state = sagemaker.describe_endpoint(name)
        if state is None:
            raise PermanentStepError(f"SageMaker endpoint {name} disappeared while it was being deployed.")
        if state.status in sagemaker.ENDPOINT_FAILED:
            raise self._failure(name, f"SageMaker endpoint {name} failed", state.failure_reason)
        if state.status == sagemaker.ENDPOINT_READY:
            if state.config_name == config:
                return StepOutcome.done(f"SageMaker endpoint {name} is InService.")
            # InService on another config after an update started means SageMaker rolled
            # back; before it was seen updating, the update has not shown up yet.
            if ctx.intent.get("saw_update") or ctx.elapsed() > UPDATE_VISIBLE_SECONDS:
                raise self._failure(
                    name, f"SageMaker rolled endpoint {name} back to its previous version", state.failure_reason
                )
            return StepOutcome.wait(POLL_SECONDS, f"Waiting for SageMaker to start updating {name}.")
        if not ctx.intent.get("saw_update"):
            ctx.intent["saw_update"] = True
            ctx.save_intent()
        if ctx.elapsed() > ctx.options.get("startup_timeout", 600) + PROVISIONING_ALLOWANCE:
            raise self._failure(name, f"SageMaker endpoint {name} did not come up in time", state.failure_reason)
        return StepOutcome.wait(POLL_SECONDS, f"SageMaker endpoint {name} is {state.status}.")

    def _step_autoscaling(self, ctx: StepContext) -> StepOutcome:
        scaling = ctx.options.get("autoscaling")
        if not scaling:
            return StepOutcome.skipped("No autoscaling asked for.")
        name = endpoint_name(ctx.endpoint)
        ctx.record_resource("autoscaling_target", f"{name}/{VARIANT}")
        autoscaling.enable(
            name,
            VARIANT,
            min_capacity=scaling["min"],
            max_capacity=scaling["max"],
            target=scaling["target_invocations"],
            tags=_tags(ctx),
        )
        return StepOutcome.done(
            f"Autoscaling {scaling['min']}-{scaling['max']} instances at {scaling['target_invocations']} "
            "invocations per instance per minute."
        )

    def _step_public_function(self, ctx: StepContext) -> StepOutcome:
        region = _region()
        endpoint = ctx.endpoint
        name = endpoint_name(endpoint)
        role_arn = settings.RDEPLOY_LAMBDA_ROLE_ARN
        if not role_arn:
            role = role_name(endpoint)
            ctx.record_resource("iam_role", role)
            role_arn = iam.ensure_role(
                role,
                path=f"/{prefix()}/",
                trust=iam.LAMBDA_TRUST,
                policy=self._function_policy(name, function_log_group(endpoint), region),
                tags=_tags(ctx),
                boundary=settings.RDEPLOY_LAMBDA_PERMISSIONS_BOUNDARY,
            )
        key_name = _name(prefix(), endpoint.name)
        ctx.record_resource("apigateway_api_key", key_name)
        _key_id, usage_key = apigateway.ensure_api_key(key_name, value=secrets.token_urlsafe(30), tags=_tags(ctx))
        function = function_name(endpoint)
        self._ensure_log_group(ctx, function_log_group(endpoint))
        ctx.record_resource("lambda_function", function)
        environment = {
            "SAGEMAKER_ENDPOINT_NAME": name,
            "RDEPLOY_API_KEY_SHA256": endpoint.api_key_hash,
            "RDEPLOY_USAGE_KEY": usage_key,
        }
        try:
            arn = lambda_.create_function(
                function,
                role_arn=str(role_arn),
                code=lambda_.package(HANDLER_FILE),
                environment=environment,
                tags=_tags(ctx),
                timeout=LAMBDA_TIMEOUT,
            )
        except AwsError as error:
            # A role created seconds ago is not yet assumable everywhere (IAM is eventually consistent).
            if error.code == "InvalidParameterValueException" and "assume" in error.message:
                raise TransientStepError("Waiting for the new IAM role to propagate.", retry_after=10) from error
            raise
        ctx.record_resource("lambda_function", function, {"arn": arn})
        return StepOutcome.done(f"Lambda function {function} forwards to {name}.")

    @staticmethod
    def _function_policy(endpoint: str, log_group: str, region: str) -> dict[str, Any]:
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "sagemaker:InvokeEndpoint",
                    "Resource": f"arn:aws:sagemaker:{region}:*:endpoint/{endpoint}",
                },
                {
                    # The group exists (rdeploy made it): no CreateLogGroup, so a line after
                    # teardown cannot recreate it.
                    "Effect": "Allow",
                    "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                    "Resource": f"arn:aws:logs:{region}:*:log-group:{log_group}:*",
                },
            ],
        }

    def _step_public_api(self, ctx: StepContext) -> StepOutcome:
        region = _region()
        endpoint = ctx.endpoint
        api_name = _name(prefix(), endpoint.name)
        function = function_name(endpoint)
        function_arn = _details(ctx, "lambda_function")["arn"]
        account = function_arn.split(":")[4]
        ctx.record_resource("apigateway_rest_api", api_name)
        api_id = apigateway.ensure_rest_api(api_name, tags=_tags(ctx))
        authorizer_id = apigateway.ensure_authorizer(api_id, name="api-key", lambda_arn=function_arn, region=region)
        apigateway.ensure_invocations_route(api_id, lambda_arn=function_arn, region=region, authorizer_id=authorizer_id)
        source = f"arn:aws:execute-api:{region}:{account}:{api_id}"
        lambda_.allow_api_gateway(function, statement_id=f"invoke-{api_id}", source_arn=f"{source}/*/POST/invocations")
        lambda_.allow_api_gateway(
            function, statement_id=f"authorize-{api_id}", source_arn=f"{source}/authorizers/{authorizer_id}"
        )
        apigateway.ensure_stage(api_id, STAGE)
        throttle = ctx.options.get("throttle") or {"rate": 10, "burst": 20}
        key_id = apigateway.find_api_key(ctx.resource_id("apigateway_api_key"))
        if key_id is None:
            raise TransientStepError("The usage-plan key is not visible yet.", retry_after=5)
        ctx.record_resource("apigateway_usage_plan", api_name)
        apigateway.ensure_usage_plan(
            api_name,
            api_id=api_id,
            stage=STAGE,
            key_id=key_id,
            rate_limit=float(throttle["rate"]),
            burst_limit=int(throttle["burst"]),
            quota_per_day=int(ctx.options.get("quota_per_day", _DEFAULTS["quota_per_day"])),
            tags=_tags(ctx),
        )
        url = apigateway.invoke_url(api_id, region=region, stage=STAGE)
        ctx.record_resource("apigateway_rest_api", api_name, {"id": api_id, "url": url})
        ctx.set_public_url(url)
        return StepOutcome.done(f"Public API at {url} (send the endpoint's API key as x-api-key).")

    def _step_switch_traffic(self, ctx: StepContext) -> StepOutcome:
        ctx.set_runtime(
            endpoint_name=endpoint_name(ctx.endpoint),
            region=_region(),
            variant=VARIANT,
            deployment=ctx.deployment.pk,
        )
        return StepOutcome.done("Traffic goes to the new version.")

    def _step_retire_previous(self, ctx: StepContext) -> StepOutcome:
        previous = ctx.previous
        if previous is None or previous.pk == ctx.deployment.pk:
            return StepOutcome.skipped("Nothing was live before.")
        removed = 0
        for resource in reversed(list(ctx.deployment_resources(previous))):
            if resource.kind in PER_ENDPOINT_KINDS:
                continue
            if resource.kind in SHARED_KINDS and ctx.deployment.resources.get(resource.kind) == resource.identifier:
                continue
            self._remove(ctx, resource)
            removed += 1
        return StepOutcome.done(f"Removed {removed} resource(s) of the previous version.")

    # --- teardown ----------------------------------------------------------------------
    def _remove(self, ctx: StepContext, resource: ExternalResource) -> None:
        """Delete one resource (already gone counts as done) and record that it is gone."""
        kind, identifier = resource.kind, resource.identifier
        if kind in SHARED_KINDS:
            other = _other_user(kind, identifier, ctx.endpoint)
            if other is not None:
                # Another endpoint still serves from it: it now owns the record.
                ExternalResource.objects.filter(pk=resource.pk).update(endpoint=other.endpoint, deployment=other)
                return
            if kind == "ecr_image":
                # Kept for a grace period (`rdeploy_gc --delete` removes it later), so a
                # redeploy of the same packages does not rebuild.
                details = {**resource.details, "unused_since": timezone.now().isoformat()}
                ExternalResource.objects.filter(pk=resource.pk).update(endpoint=None, details=details)
                return
        if kind == "log_group":
            # Its last lines (written since the last collection) go into the endpoint's log first.
            self._copy_log_lines(ctx.endpoint, {identifier: _log_source(identifier)}, drain=True)
        delete_cloud_resource(kind, identifier)
        ctx.mark_resource_deleted(kind, identifier)

    def _remove_kinds(self, ctx: StepContext, kinds: tuple[str, ...]) -> int:
        resources = [r for r in ctx.live_resources() if r.kind in kinds]
        resources.sort(key=lambda r: (kinds.index(r.kind), -r.pk))
        for resource in resources:
            self._remove(ctx, resource)
        return len(resources)

    def _step_remove_public_api(self, ctx: StepContext) -> StepOutcome:
        # The usage plan goes before its API and key; the function before its role.
        count = self._remove_kinds(
            ctx,
            ("apigateway_usage_plan", "apigateway_api_key", "apigateway_rest_api", "lambda_function", "iam_role"),
        )
        return StepOutcome.done(f"Removed {count} public API resource(s).") if count else StepOutcome.skipped()

    def _step_remove_autoscaling(self, ctx: StepContext) -> StepOutcome:
        count = self._remove_kinds(ctx, ("autoscaling_target",))
        return StepOutcome.done("Autoscaling removed.") if count else StepOutcome.skipped()

    def _step_remove_endpoint(self, ctx: StepContext) -> StepOutcome:
        waiting = []
        for resource in ctx.live_resources().filter(kind="sagemaker_endpoint"):
            state = sagemaker.describe_endpoint(resource.identifier)
            if state is None:
                ctx.mark_resource_deleted(resource.kind, resource.identifier)
                continue
            if state.status != "Deleting":
                sagemaker.delete_endpoint(resource.identifier)
                if sagemaker.describe_endpoint(resource.identifier) is None:
                    ctx.mark_resource_deleted(resource.kind, resource.identifier)
                    continue
            waiting.append(resource.identifier)
        if waiting:
            return StepOutcome.wait(10, f"Deleting SageMaker endpoint {', '.join(waiting)}.")
        return StepOutcome.done("SageMaker endpoint deleted.")

    def _step_remove_models(self, ctx: StepContext) -> StepOutcome:
        count = self._remove_kinds(ctx, ("sagemaker_endpoint_config", "sagemaker_model"))
        return StepOutcome.done(f"Removed {count} SageMaker model(s) and config(s).")

    def _step_remove_monitoring(self, ctx: StepContext) -> StepOutcome:
        # A group SageMaker or Lambda made itself (for an endpoint deployed before rdeploy
        # made them) is the endpoint's all the same: recorded now, removed like the others.
        recorded = set(ctx.live_resources().filter(kind="log_group").values_list("identifier", flat=True))
        for group in (endpoint_log_group(ctx.endpoint), function_log_group(ctx.endpoint)):
            if group not in recorded and any(name == group for name, _arn in logs.log_groups(group)):
                ctx.record_resource("log_group", group)
        # Log groups last, once nothing writes to them any more (SageMaker and Lambda would
        # create them again, untagged, for a late line; rdeploy_gc finds those by name).
        count = self._remove_kinds(ctx, ("cloudwatch_alarm", "log_group"))
        return StepOutcome.done(f"Removed {count} alarm(s) and log group(s).") if count else StepOutcome.skipped()

    def _step_release_artifacts(self, ctx: StepContext) -> StepOutcome:
        count = self._remove_kinds(ctx, ("docker_build", "build_context", "model_data", "ecr_image"))
        return StepOutcome.done(f"Released {count} artifact(s); images stay for reuse until rdeploy_gc removes them.")

    def discard(self, ctx: StepContext) -> None:
        live = ctx.previous if ctx.previous is not None and ctx.previous.pk != ctx.deployment.pk else None
        # Newest first, log groups after whatever writes to them.
        resources = sorted(ctx.deployment_resources().order_by("-id"), key=lambda r: r.kind == "log_group")
        for resource in resources:
            if live is not None and resource.kind in PER_ENDPOINT_KINDS:
                continue
            if live is not None and live.resources.get(resource.kind) == resource.identifier:
                # The live version uses the same image or model data: it keeps the record.
                ExternalResource.objects.filter(pk=resource.pk).update(deployment=live)
                continue
            self._remove(ctx, resource)

    # --- outside deployments ------------------------------------------------------------
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
                raise self._failure(name, f"SageMaker endpoint {name} failed", state.failure_reason)
            if endpoint.public:
                self._sync_public_key(endpoint)
        except AwsError as error:
            if error.transient:
                return
            raise PermanentStepError(f"AWS: {error.code}: {error.message}") from error

    def _sync_public_key(self, endpoint: Endpoint) -> bool:
        """Give the authorizer the endpoint's key hash, then flush API Gateway's cache of
        its answers, so a rotated key stops working at once (not after the 60 s TTL).

        The flush waits until Lambda serves the new environment (an update takes a few
        seconds); a flush before that could cache the old key's "Allow" again. Done once
        per key: the hash it was done for is kept on the API's record. Returns whether the
        key is in force.
        """
        function = function_name(endpoint)
        key_hash = endpoint.api_key_hash
        environment = lambda_.environment_of(function)
        if environment is None:
            return True
        if environment.get("RDEPLOY_API_KEY_SHA256") != key_hash:
            lambda_.set_environment(function, {**environment, "RDEPLOY_API_KEY_SHA256": key_hash})
        api = ExternalResource.objects.filter(
            target=Endpoint.Target.SAGEMAKER,
            kind="apigateway_rest_api",
            identifier=_name(prefix(), endpoint.name),
            deleted_at__isnull=True,
        ).first()
        if api is None or not api.details.get("id") or api.details.get("authorizer_flushed_for") == key_hash:
            return True
        if not lambda_.update_finished(function):
            return False
        apigateway.flush_authorizer_cache(str(api.details["id"]), STAGE)
        ExternalResource.objects.filter(pk=api.pk).update(details={**api.details, "authorizer_flushed_for": key_hash})
        return True

    def push_api_key(self, endpoint: Endpoint) -> None:
        if not self._sync_public_key(endpoint):
            # The push task retries with backoff; the reconciler's check would finish it too.
            raise TransientStepError("The authorizer's new key is not active yet; flushing its cache later.")

    def collect_logs(self, endpoint: Endpoint) -> int:
        # Called by the reconciler and by every log request of the dashboard: CloudWatch's
        # FilterLogEvents allows only a few calls per second per account, so at most one
        # collection per endpoint every LOG_COLLECT_INTERVAL seconds, across processes.
        key = f"rdeploy:sagemaker-logs:{endpoint.pk}:{endpoint.created_at.timestamp()}"
        if not cache.add(key, 1, LOG_COLLECT_INTERVAL):
            return 0
        groups = {endpoint_log_group(endpoint): LogLine.Source.ENDPOINT}
        if endpoint.public:
            groups[function_log_group(endpoint)] = LogLine.Source.GATEWAY
        try:
            return self._copy_log_lines(endpoint, groups, drain=False)
        except AwsError:
            # Logs are best effort: the next collection continues from the saved cursor.
            return 0

    def _copy_log_lines(self, endpoint: Endpoint, groups: Mapping[str, str], *, drain: bool) -> int:
        """New lines of ``groups`` ({group: LogLine source}) into the endpoint's log: one
        batch per group, or (``drain``) every line there is. Each batch is stored together
        with its group's cursor (kept on the SageMaker endpoint's record, the row locked
        meanwhile), so a rerun or a concurrent collection never copies a line twice."""
        stored = 0
        for group, source in groups.items():
            while True:
                with transaction.atomic():
                    resource = (
                        ExternalResource.objects.select_for_update()
                        .filter(target=Endpoint.Target.SAGEMAKER, kind="sagemaker_endpoint")
                        .filter(identifier=endpoint_name(endpoint))
                        .first()
                    )
                    if resource is None:
                        return stored
                    cursors: dict[str, int] = dict(resource.details.get("log_cursors", {}))
                    events = logs.events_since(group, start_ms=cursors.get(group, 0), limit=MAX_LOG_LINES_PER_COLLECT)
                    if events:
                        LogLine.objects.bulk_create(
                            LogLine(endpoint=endpoint, source=source, message=event.message.rstrip())
                            for event in events
                        )
                        cursors[group] = events[-1].timestamp + 1
                        resource.details = {**resource.details, "log_cursors": cursors}
                        resource.save(update_fields=["details"])
                        stored += len(events)
                if not drain or len(events) < MAX_LOG_LINES_PER_COLLECT:
                    break
        return stored


def _log_source(group: str) -> str:
    return LogLine.Source.GATEWAY if group.startswith("/aws/lambda/") else LogLine.Source.ENDPOINT


def delete_cloud_resource(kind: str, identifier: str) -> None:
    """Delete one resource rdeploy created, named as ExternalResource names it; already
    gone counts as deleted."""
    if kind in ("model_data", "build_context"):
        s3.delete_object(*_s3_location(identifier))
    elif kind == "sagemaker_model":
        sagemaker.delete_model(identifier)
    elif kind == "sagemaker_endpoint_config":
        sagemaker.delete_endpoint_config(identifier)
    elif kind == "sagemaker_endpoint":
        sagemaker.delete_endpoint(identifier)
    elif kind == "autoscaling_target":
        endpoint, _, variant = identifier.partition("/")
        autoscaling.disable(endpoint, variant)
    elif kind == "iam_role":
        iam.delete_role(identifier)
    elif kind == "lambda_function":
        lambda_.delete_function(identifier)
    elif kind == "apigateway_api_key":
        apigateway.delete_api_key(identifier)
    elif kind == "apigateway_rest_api":
        apigateway.delete_rest_api(identifier)
    elif kind == "apigateway_usage_plan":
        apigateway.delete_usage_plan(identifier)
    elif kind == "ecr_image":
        repository, _, tag = identifier.partition(":")
        ecr.delete_image(repository, tag)
    elif kind == "cloudwatch_alarm":
        cloudwatch.delete_alarm(identifier)
    elif kind == "log_group":
        logs.delete_log_group(identifier)
    elif kind == "docker_build":
        # Not in the cloud: a local build job (its files hold an ECR login).
        images.remove_job(docker_build_dir(identifier))


def cloud_orphans(*, image_grace_seconds: float = IMAGE_GRACE_SECONDS) -> list[CloudResource]:
    """Cloud resources carrying this installation's tags that no live database row owns,
    and images no endpoint has used for longer than the grace period."""
    cutoff = timezone.now() - timedelta(seconds=image_grace_seconds)
    owned: set[tuple[str, str]] = set()
    rows = ExternalResource.objects.filter(target=Endpoint.Target.SAGEMAKER, deleted_at__isnull=True)
    for row in rows.select_related("endpoint"):
        if row.endpoint is not None and row.endpoint.status != Endpoint.Status.DELETED:
            owned.add((row.kind, row.identifier))
            # The groups its endpoint or function logs to, recorded or not (an endpoint
            # deployed before rdeploy made them has them from SageMaker and Lambda).
            if row.kind == "sagemaker_endpoint":
                owned.add(("log_group", f"/aws/sagemaker/Endpoints/{row.identifier}"))
            elif row.kind == "lambda_function":
                owned.add(("log_group", f"/aws/lambda/{row.identifier}"))
        elif row.kind == "ecr_image":
            since = row.details.get("unused_since")
            if not since or datetime.fromisoformat(since) > cutoff:
                owned.add((row.kind, row.identifier))
    inventory = tagging.inventory(
        installation=settings.INSTALLATION_ID,
        prefix=prefix(),
        bucket=settings.RDEPLOY_S3_BUCKET,
        repository=str(settings.RDEPLOY_ECR_REPOSITORY),
    )
    return [resource for resource in inventory if (resource.kind, resource.identifier) not in owned]


def cloud_orphans_delete(orphans: list[CloudResource]) -> None:
    """Delete ``orphans`` (endpoints first, so their configs and models can go) and mark
    any database record of them deleted."""
    order = [
        "apigateway_usage_plan",
        "apigateway_api_key",
        "apigateway_rest_api",
        "lambda_function",
        "iam_role",
        "autoscaling_target",
        "sagemaker_endpoint",
        "sagemaker_endpoint_config",
        "sagemaker_model",
        "cloudwatch_alarm",
        "log_group",
        "build_context",
        "model_data",
        "ecr_image",
    ]
    for resource in sorted(orphans, key=lambda r: order.index(r.kind) if r.kind in order else len(order)):
        delete_cloud_resource(resource.kind, resource.identifier)
        ExternalResource.objects.filter(
            target=Endpoint.Target.SAGEMAKER,
            kind=resource.kind,
            identifier=resource.identifier,
            deleted_at__isnull=True,
        ).update(deleted_at=timezone.now())
