"""RDEPLOY_IMAGE_BUILDER=docker: the serving image built and tested on this machine is the
one pushed for SageMaker, by the real engine (podman here) into a real registry.

ECR's API is moto; the push and pull go to `docker-registry` (Debian's OCI registry) on a
port it could bind, plain HTTP, which podman reaches through a registries.conf entry marking it
insecure (CONTAINERS_REGISTRIES_CONF; production ECR is HTTPS and needs none). The
`registry_as_ecr` fixture makes the ECR module name that registry: the repository URI and
the login's registry, and an image "exists" in ECR once moto or the registry has it.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from deployer.integrations import processes
from deployer.integrations.aws import ecr
from deployer.integrations.aws.client import aws_client
from deployer.integrations.containers import cli, images
from deployer.models import Deployment, DeploymentStep, ExternalResource, LogLine, ModelVersion
from deployer.services.images import serving_image_ensure
from deployer.services.pipeline import deployment_advance
from deployer.serving_images import local_image
from deployer.targets.sagemaker import image as sagemaker_image
from deployer.targets.sagemaker.image import docker_build_dir, image_build_context
from deployer.targets.sagemaker.names import rollout_name
from deployer.tests.image_support import make_cran_repository, nothing_installs
from deployer.tests.sagemaker_support import builds_started, drive, latest, push_image, stub_model
from testsupport.moto import MotoServer
from testsupport.services import OciRegistry
from testsupport.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    """A real OCI registry (docker-registry) with its storage in a temporary directory, on a
    port it could bind (testsupport/services.py)."""
    registry = OciRegistry(tmp_path_factory.mktemp("registry"))
    registry.start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTAINERS_REGISTRIES_CONF", str(registry.registries_conf))
        yield registry
    registry.stop()


def pushed_tags(registry: OciRegistry, repository: str) -> list[str]:
    tags = registry.tags(repository)
    assert tags is not None, "the registry does not answer"
    return tags


@pytest.fixture
def registry_as_ecr(
    aws: MotoServer, registry: OciRegistry, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> OciRegistry:
    settings.RDEPLOY_IMAGE_BUILDER = "docker"
    ensure_repository, image_exists = ecr.ensure_repository, ecr.image_exists

    def repository_in_registry(name: str, *, tags: dict[str, str]) -> str:
        ensure_repository(name, tags=tags)
        return f"{registry.address}/{name}"

    def login_to_registry() -> tuple[str, str, str]:
        data = aws_client("ecr").get_authorization_token()["authorizationData"][0]
        username, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
        return username, password, f"https://{registry.address}"

    # Real builds and pushes take seconds: poll them often (the pipeline waits inline).
    monkeypatch.setattr(sagemaker_image, "DOCKER_POLL_SECONDS", 0.2)
    monkeypatch.setattr(ecr, "ensure_repository", repository_in_registry)
    monkeypatch.setattr(ecr, "docker_login", login_to_registry)
    monkeypatch.setattr(
        ecr,
        "image_exists",
        lambda repository, tag: image_exists(repository, tag) or tag in (registry.tags(repository) or []),
    )
    return registry


def create(owner: User, api_client_for: Any, model: ModelVersion, name: str = "iris-docker") -> Deployment:
    response = api_client_for(owner).post(
        "/api/v1/endpoints/", {"name": name, "model": model.pk, "target": "sagemaker"}, format="json"
    )
    assert response.status_code == 202, response.content
    return latest(name)


def build_then_drive(deployment: Deployment, timeout: float = 300) -> Deployment:
    """The worker's way through the build step (a poll runs when it is due, so a running
    build is not counted as a retry), then drive() through the rest."""
    deadline = time.monotonic() + timeout
    while deployment.steps.get(name="build_image").status in (
        DeploymentStep.Status.PENDING,
        DeploymentStep.Status.RUNNING,
    ):
        assert time.monotonic() < deadline, "the build step did not finish"
        Deployment.objects.filter(pk=deployment.pk).update(lease_until=None)
        deployment_advance(deployment_id=deployment.pk)
        time.sleep(0.05)
    return drive(deployment)


def advance_once(deployment: Deployment) -> DeploymentStep:
    DeploymentStep.objects.filter(deployment=deployment).update(next_check_at=None)
    Deployment.objects.filter(pk=deployment.pk).update(lease_until=None)
    deployment_advance(deployment_id=deployment.pk)
    return deployment.steps.get(name="build_image")


def build_lines(deployment: Deployment) -> list[str]:
    return list(
        LogLine.objects.filter(deployment=deployment, source=LogLine.Source.BUILD)
        .order_by("id")
        .values_list("message", flat=True)
    )


def image_id(image: str) -> str:
    return cli.check(["image", "inspect", "--format", "{{.Id}}", image]).strip()


def remove_image(image: str) -> None:
    cli.run(["rmi", "--force", image])


def test_the_image_built_on_this_machine_is_the_one_pushed_and_pulled_back_byte_for_byte(
    registry_as_ecr: OciRegistry, owner: User, api_client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = stub_model(owner)
    local = serving_image_ensure(packages=["randomForest"])
    assert local == local_image(image_build_context(model))
    commands: list[list[str]] = []
    run = cli.run

    def recorded(arguments: list[str], **options: Any) -> subprocess.CompletedProcess[bytes]:
        commands.append(list(arguments))
        return run(arguments, **options)

    monkeypatch.setattr(cli, "run", recorded)

    deployment = build_then_drive(create(owner, api_client_for, model))

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    tag = image_build_context(model).tag
    pushed = f"{registry_as_ecr.address}/rdeploy-runtime:{tag}"
    assert tag in pushed_tags(registry_as_ecr, "rdeploy-runtime")
    assert not any(command[0] == "build" for command in commands)  # nothing was built: it was there
    # The login's password went on stdin, into a config private to the build, deleted with it.
    token = aws_client("ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
    password = base64.b64decode(token).decode().split(":", 1)[1]
    assert ["login", "--username", "AWS", "--password-stdin", f"https://{registry_as_ecr.address}"] in commands
    assert not any(password in argument for command in commands for argument in command)
    assert not docker_build_dir(deployment.resources[ExternalResource.Kind.DOCKER_BUILD]).exists()
    assert ExternalResource.objects.get(kind=ExternalResource.Kind.DOCKER_BUILD).deleted_at is not None
    assert builds_started() == 0
    assert f"Pushing {local}, the image built on this machine." in build_lines(deployment)
    sagemaker_model = aws_client("sagemaker").describe_model(ModelName=rollout_name(deployment))
    assert sagemaker_model["PrimaryContainer"]["Image"] == pushed
    # What SageMaker pulls is the image inspection and local endpoints ran.
    remove_image(pushed)
    cli.check(["pull", "--quiet", pushed], timeout=120)
    assert image_id(pushed) == image_id(local)
    remove_image(pushed)


def test_a_package_set_without_a_local_image_is_built_detached_for_sagemakers_platform_then_pushed(
    registry_as_ecr: OciRegistry, owner: User, api_client_for: Any
) -> None:
    model = stub_model(owner, packages={"required": [{"name": "rpart"}, {"name": "e1071"}]})
    context = image_build_context(model)
    remove_image(local_image(context))

    deployment = build_then_drive(create(owner, api_client_for, model))

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    # Two detached jobs, the build then the push, whose lines reached the log.
    assert deployment.steps.get(name="build_image").intent["docker"]["phase"] == "push"
    assert context.tag in pushed_tags(registry_as_ecr, "rdeploy-runtime")
    lines = build_lines(deployment)
    assert f"STEP 1/11: FROM {context.base_image}" in lines
    # Tagged with the local name too: local endpoints and inspection reuse it.
    pushed = f"{registry_as_ecr.address}/rdeploy-runtime:{context.tag}"
    assert image_id(local_image(context)) == image_id(pushed)
    assert cli.check(["image", "inspect", "--format", "{{.Architecture}}", pushed]).strip() == "amd64"
    assert deployment.steps.get(name="build_image").message == f"Built and pushed {pushed} with podman."
    remove_image(pushed)


def test_a_failing_build_fails_the_step_with_its_last_lines(
    registry_as_ecr: OciRegistry, owner: User, api_client_for: Any
) -> None:
    model = stub_model(owner, packages={"required": [{"name": "rdeploynosuchpackage"}]})

    deployment = build_then_drive(create(owner, api_client_for, model))

    assert deployment.status == Deployment.Status.FAILED
    message = deployment.steps.get(name="build_image").message
    assert message.startswith("The image build failed: podman build exited with status ")
    assert "not in Debian (as r-cran-*) and RDEPLOY_CRAN_REPO is not set: rdeploynosuchpackage" in message
    assert not docker_build_dir(deployment.resources[ExternalResource.Kind.DOCKER_BUILD]).exists()
    assert image_build_context(model).tag not in pushed_tags(registry_as_ecr, "rdeploy-runtime")


def test_an_image_already_in_ecr_starts_no_build_and_no_push(
    registry_as_ecr: OciRegistry, owner: User, api_client_for: Any
) -> None:
    model = stub_model(owner)
    aws_client("ecr").create_repository(repositoryName="rdeploy-runtime")
    push_image(f"rdeploy-runtime:{image_build_context(model).tag}")

    deployment = drive(create(owner, api_client_for, model))

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    assert deployment.steps.get(name="build_image").status == DeploymentStep.Status.SKIPPED
    assert not ExternalResource.objects.filter(kind=ExternalResource.Kind.DOCKER_BUILD).exists()


def test_the_docker_builder_without_an_engine_command_fails_naming_the_setting(
    aws: MotoServer, owner: User, api_client_for: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.RDEPLOY_IMAGE_BUILDER = "docker"
    monkeypatch.setenv("PATH", "/nonexistent")

    deployment = drive(create(owner, api_client_for, stub_model(owner)))

    assert deployment.status == Deployment.Status.FAILED
    message = deployment.steps.get(name="build_image").message
    assert "RDEPLOY_IMAGE_BUILDER=docker" in message
    assert "no podman command" in message


@pytest.fixture
def held_build(
    registry_as_ecr: OciRegistry, owner: User, api_client_for: Any, settings: Any, tmp_path: Path
) -> tuple[Deployment, str]:
    """A rollout whose build runs in the background for a minute (its one package sleeps
    while R installs it), and the build job's process marker."""
    settings.CRAN_REPO = make_cran_repository(tmp_path, package="rdeployslow", answer=1, install_seconds=60)
    model = stub_model(owner, packages={"required": [{"name": "rdeployslow"}]})
    deployment = create(owner, api_client_for, model)
    advance_once(deployment)
    deployment.refresh_from_db()
    directory = docker_build_dir(deployment.resources[ExternalResource.Kind.DOCKER_BUILD])
    wait_for(lambda: "installing *source* package" in (directory / images.OUTPUT).read_text(errors="replace"))
    return deployment, images.job_marker(directory)


def test_a_build_step_rerun_after_a_crash_replaces_the_build_it_had_started(
    held_build: tuple[Deployment, str], owner: User, api_client_for: Any
) -> None:
    deployment, marker = held_build
    first = processes.find(marker)
    assert first
    # The worker died after starting the build and before recording it.
    step = deployment.steps.get(name="build_image")
    step.intent.pop("docker")
    DeploymentStep.objects.filter(pk=step.pk).update(intent=step.intent)

    advance_once(deployment)

    assert processes.find(marker)
    assert not set(first) & set(processes.find(marker))
    assert deployment.steps.get(name="build_image").intent["docker"]["phase"] == "build"
    Deployment.objects.filter(pk=deployment.pk).update(lease_until=None)
    assert api_client_for(owner).delete("/api/v1/endpoints/iris-docker/").status_code == 202
    assert drive(latest("iris-docker")).status == Deployment.Status.SUCCEEDED
    assert processes.find(marker) == []
    wait_for(lambda: nothing_installs("rdeployslow"), timeout=20)


def test_deleting_the_endpoint_stops_a_running_build_and_removes_its_files(
    held_build: tuple[Deployment, str], owner: User, api_client_for: Any
) -> None:
    deployment, marker = held_build
    assert processes.find(marker)
    Deployment.objects.filter(pk=deployment.pk).update(lease_until=None)

    assert api_client_for(owner).delete("/api/v1/endpoints/iris-docker/").status_code == 202
    teardown = drive(latest("iris-docker"))

    assert teardown.status == Deployment.Status.SUCCEEDED, teardown.error
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.FAILED
    assert processes.find(marker) == []
    assert not docker_build_dir(deployment.resources[ExternalResource.Kind.DOCKER_BUILD]).exists()
    assert ExternalResource.objects.get(kind=ExternalResource.Kind.DOCKER_BUILD).deleted_at is not None
    wait_for(lambda: nothing_installs("rdeployslow"), timeout=20)
