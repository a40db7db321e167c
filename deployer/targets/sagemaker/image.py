"""Step ``build_image``: the serving image in ECR, tagged by its build context's content
hash, so a model version needing the same R packages (and renv.lock) builds nothing.

Built by CodeBuild (the context zipped to S3) or, with RDEPLOY_IMAGE_BUILDER=docker, by this
worker's container engine (the local serving image of the same context pushed as it is).
"""

from __future__ import annotations

import hashlib
import platform
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from django.conf import settings

from deployer.build_context import PUBLIC_BASE_IMAGE, BuildContext
from deployer.integrations.aws import codebuild, ecr, logs, s3
from deployer.integrations.aws.tagging import resource_tags
from deployer.integrations.containers import cli, images
from deployer.models import ExternalResource, LogLine, ModelVersion
from deployer.serving_images import local_image, model_version_image_context
from deployer.targets.base import PermanentStepError, StepContext, StepOutcome, TransientStepError
from deployer.targets.sagemaker.cloud_logs import LOG_LINES_IN_FAILURE, LOG_RETENTION_DAYS
from deployer.targets.sagemaker.names import (
    build_log_group,
    join_name,
    prefix,
    required_setting,
    s3_location,
    step_tags,
)
from deployer.targets.sagemaker.ownership import ensure_ours

BUILD_POLL_SECONDS = 15.0
# A local engine's build output is a file here: poll it more often than CodeBuild.
DOCKER_POLL_SECONDS = 5.0
# SageMaker's instances (and CodeBuild's image) are x86_64.
SAGEMAKER_PLATFORM = "linux/amd64"
SAGEMAKER_ARCHITECTURE = "amd64"


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


def context_zip(context: BuildContext, destination: Path) -> None:
    """The build context as the zip CodeBuild's S3 source expects (fixed order and times)."""
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(context.files):
            content, mode = context.files[path]
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | mode) << 16
            archive.writestr(info, content)


def build_image(ctx: StepContext) -> StepOutcome:
    outcome = _build_image(ctx)
    if outcome.kind != StepOutcome.WAIT:
        # What the cost estimate counts for the image's storage (deployer/services/costs.py).
        resource = ctx.resource(ExternalResource.Kind.ECR_IMAGE)
        repository, _, tag = resource.identifier.rpartition(":")
        size = ecr.image_size(repository, tag)
        if size is not None and resource.details.get("size_bytes") != size:
            ctx.update_resource_details(resource, size_bytes=size)
    return outcome


def _build_image(ctx: StepContext) -> StepOutcome:
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
    ensure_ours(ExternalResource.Kind.ECR_IMAGE, f"{repository}:{tag}")
    ctx.record_resource(ExternalResource.Kind.ECR_IMAGE, f"{repository}:{tag}", {"uri": image, "unused_since": None})
    if ecr.image_exists(repository, tag):
        if ctx.intent.get("docker"):
            # Our push finished between two polls (or a concurrent build pushed the same tag).
            _remove_docker_build(ctx)
            return StepOutcome.done(f"Built and pushed {image} with {settings.CONTAINER_CLI}.")
        return StepOutcome.skipped(f"Image {tag} is already in ECR: the same R packages need no build.")
    if settings.RDEPLOY_IMAGE_BUILDER == "docker":
        return _build_with_docker(ctx, context=context, image=image, repository=repository, tag=tag)
    build_id = ctx.intent.get("build_id")
    if not build_id:
        context = context or image_build_context(ctx.model_version)
        bucket = required_setting("RDEPLOY_S3_BUCKET")
        role = required_setting("RDEPLOY_CODEBUILD_ROLE_ARN")
        key = f"{prefix()}/build-context/{tag}.zip"
        ctx.record_resource(ExternalResource.Kind.BUILD_CONTEXT, f"s3://{bucket}/{key}")
        if not s3.object_exists(bucket, key):
            with tempfile.TemporaryDirectory(dir=Path(settings.DATA_DIR) / "tmp") as tmp:
                archive = Path(tmp) / "context.zip"
                context_zip(context, archive)
                s3.upload_file(bucket, key, archive, tags=step_tags(ctx))
        project = join_name(prefix(), "image-builder")
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
    _stream_build_logs(ctx, state)
    if state.status == "IN_PROGRESS":
        return StepOutcome.wait(BUILD_POLL_SECONDS, f"Building the image ({state.phase or 'queued'}).")
    _remove_build_context(ctx)
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
    ctx: StepContext, *, context: BuildContext | None, image: str, repository: str, tag: str
) -> StepOutcome:
    """The image from this worker's engine (RDEPLOY_IMAGE_BUILDER=docker), pushed to ECR:
    the local serving image of the same context when the engine has it (the very image
    inspection and local endpoints ran), else a build of it. Build and push are detached
    jobs polled every DOCKER_POLL_SECONDS."""
    job = ctx.intent.get("docker")
    if job is None:
        identifier = join_name(prefix(), "image-build", f"d{ctx.deployment.pk}")
        directory = docker_build_dir(identifier)
        ctx.record_resource(ExternalResource.Kind.DOCKER_BUILD, identifier, {"directory": str(directory)})
        context = context or image_build_context(ctx.model_version)
        local = local_image(context)
        try:
            if images.image_present(local) and images.architecture(local) == SAGEMAKER_ARCHITECTURE:
                images.tag(local, image)
                ctx.log(f"Pushing {local}, the image built on this machine.", source=LogLine.Source.BUILD)
                return _start_push(ctx, job={"identifier": identifier}, image=image)
            # The local name too where SageMaker's platform is this machine's.
            also_local = [local] if platform.machine() in ("x86_64", "amd64") else []
            started = images.start_build(
                directory=directory, context=context, tags=[image, *also_local], platform=SAGEMAKER_PLATFORM
            )
        except cli.EngineUnavailable as error:
            raise PermanentStepError(
                f"RDEPLOY_IMAGE_BUILDER=docker, but {error}. Install podman or Docker on the workers, or use codebuild."
            ) from error
        except cli.EngineCommandFailed as error:
            raise TransientStepError(str(error)) from error
        job = {"identifier": identifier, "phase": started.phase, "pid": started.pid, "ticks": started.start_ticks}
        ctx.intent.update(docker=job, log_offset=0)
        ctx.save_intent()
        ctx.log(f"Build of image {tag} started on this worker.", source=LogLine.Source.BUILD)
    directory = docker_build_dir(job["identifier"])
    state = images.job_state(images.Job(directory, job["phase"], job["pid"], job["ticks"]))
    _stream_docker_output(ctx, directory)
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
        _remove_docker_build(ctx)
        if ecr.image_exists(repository, tag):
            return StepOutcome.done(f"Image {tag} was pushed by a concurrent build.")
        raise PermanentStepError(
            f"The image build failed: {settings.CONTAINER_CLI} {job['phase']} exited with status "
            f"{state.exit_code}." + (f"\nLast build log lines:\n{tail}" if tail else "")
        )
    if job["phase"] == "build":
        return _start_push(ctx, job=job, image=image)
    _remove_docker_build(ctx)
    return StepOutcome.done(f"Built and pushed {image} with {settings.CONTAINER_CLI}.")


def _start_push(ctx: StepContext, *, job: dict[str, Any], image: str) -> StepOutcome:
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


def _stream_docker_output(ctx: StepContext, directory: Path) -> None:
    offset = int(ctx.intent.get("log_offset", 0))
    lines, new_offset = images.read_output(directory, offset)
    if new_offset == offset:
        return
    ctx.log_lines(lines, source=LogLine.Source.BUILD)
    ctx.intent["log_offset"] = new_offset
    ctx.save_intent()


def _remove_docker_build(ctx: StepContext) -> None:
    """The local build job's files (they hold an ECR login) once the image is in ECR."""
    identifier = ctx.deployment.resources.get(ExternalResource.Kind.DOCKER_BUILD)
    if identifier:
        images.remove_job(docker_build_dir(identifier))
        ctx.mark_resource_deleted(ExternalResource.Kind.DOCKER_BUILD, identifier)


def _stream_build_logs(ctx: StepContext, state: codebuild.BuildState) -> None:
    if not state.log_group:
        return
    start = int(ctx.intent.get("log_ms", 0))
    events = logs.events_since(state.log_group, start_ms=start, stream=state.log_stream)
    for event in events:
        ctx.log(event.message.rstrip(), source=LogLine.Source.BUILD)
    if events:
        ctx.intent["log_ms"] = events[-1].timestamp + 1
        ctx.save_intent()


def _remove_build_context(ctx: StepContext) -> None:
    uri = ctx.deployment.resources.get(ExternalResource.Kind.BUILD_CONTEXT)
    if uri:
        s3.delete_object(*s3_location(uri))
        ctx.mark_resource_deleted(ExternalResource.Kind.BUILD_CONTEXT, uri)
