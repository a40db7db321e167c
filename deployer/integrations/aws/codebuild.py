"""CodeBuild: one image-building project per installation, one build per new package set."""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import ClientError

from deployer.integrations.aws.client import aws_client, is_not_found, ok_if_exists, raises_aws_error

# Builds the image from the context zip (Dockerfile at its root) on BASE_IMAGE (the recipe's
# build argument, part of the context's tag) and pushes it to ECR.
BUILDSPEC = """\
version: 0.2
phases:
  pre_build:
    commands:
      - REGISTRY="${IMAGE_URI%%/*}"
      - aws ecr get-login-password | docker login --username AWS --password-stdin "$REGISTRY"
  build:
    commands:
      - docker build --pull --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE_URI" .
  post_build:
    commands:
      - '[ "$CODEBUILD_BUILD_SUCCEEDING" = 1 ] && docker push "$IMAGE_URI"'
"""


@dataclass(frozen=True)
class BuildState:
    id: str
    status: str  # IN_PROGRESS, SUCCEEDED, FAILED, FAULT, TIMED_OUT, STOPPED
    phase: str
    log_group: str | None
    log_stream: str | None
    failure: str


@raises_aws_error
def ensure_project(name: str, *, role_arn: str, source_location: str, tags: dict[str, str]) -> None:
    """Create the installation's project once; later builds override only the source."""
    with ok_if_exists():
        aws_client("codebuild").create_project(
            name=name,
            description="rdeploy: builds R runtime images for SageMaker",
            source={"type": "S3", "location": source_location, "buildspec": BUILDSPEC},
            artifacts={"type": "NO_ARTIFACTS"},
            environment={
                "type": "LINUX_CONTAINER",
                "image": "aws/codebuild/standard:7.0",
                "computeType": "BUILD_GENERAL1_MEDIUM",
                # Docker-in-Docker needs privileged mode.
                "privilegedMode": True,
            },
            serviceRole=role_arn,
            timeoutInMinutes=60,
            logsConfig={"cloudWatchLogs": {"status": "ENABLED", "groupName": f"/aws/codebuild/{name}"}},
            tags=[{"key": key, "value": value} for key, value in sorted(tags.items())],
        )


@raises_aws_error
def start_build(project: str, *, source_location: str, image_uri: str, base_image: str, idempotency_token: str) -> str:
    """Start a build; the token makes a retried call within 5 minutes return the same build."""
    build = aws_client("codebuild").start_build(
        projectName=project,
        sourceTypeOverride="S3",
        sourceLocationOverride=source_location,
        environmentVariablesOverride=[
            {"name": "IMAGE_URI", "value": image_uri, "type": "PLAINTEXT"},
            {"name": "BASE_IMAGE", "value": base_image, "type": "PLAINTEXT"},
        ],
        idempotencyToken=idempotency_token,
    )["build"]
    return str(build["id"])


@raises_aws_error
def build_state(build_id: str) -> BuildState:
    builds = aws_client("codebuild").batch_get_builds(ids=[build_id])["builds"]
    if not builds:
        return BuildState(build_id, "FAILED", "", None, None, "the build disappeared")
    build = builds[0]
    logs = build.get("logs") or {}
    failures = [
        context.get("message", "")
        for phase in build.get("phases", [])
        for context in phase.get("contexts", []) or []
        if context.get("message")
    ]
    group = logs.get("groupName")
    stream = logs.get("streamName")
    return BuildState(
        id=build_id,
        status=str(build["buildStatus"]),
        phase=str(build.get("currentPhase", "")),
        log_group=None if group in (None, "null") else str(group),
        log_stream=None if stream in (None, "null") else str(stream),
        failure="; ".join(failures),
    )


@raises_aws_error
def stop_build(build_id: str) -> None:
    try:
        aws_client("codebuild").stop_build(id=build_id)
    except ClientError as error:
        if not (is_not_found(error) or "InvalidInputException" in str(error)):
            raise


@raises_aws_error
def delete_project(name: str) -> None:
    """Idempotent (CodeBuild answers success for a missing project)."""
    aws_client("codebuild").delete_project(name=name)
