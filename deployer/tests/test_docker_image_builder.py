"""RDEPLOY_IMAGE_BUILDER=docker: the SageMaker image built and pushed by the worker's Docker.

No Docker engine runs here, so these tests check the engine's inputs: a recording
``docker`` executable first on PATH appends each call's arguments, stdin and
DOCKER_CONFIG to a file and prints a few build lines (it can be told to hold the build
until released, or to fail it). ECR, S3 and SageMaker are moto (server mode).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from deployer.integrations import docker_engine, processes
from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, DeploymentStep, ExternalResource, LogLine
from deployer.services.pipeline import deployment_advance
from deployer.targets.sagemaker import docker_build_dir, image_build_context
from deployer.tests.sagemaker_support import builds_started, drive, latest, push_image, ready_model
from testsupport.moto import MotoServer

pytestmark = pytest.mark.django_db

RECORDER = """#!{python}
import base64, json, os, pathlib, sys, time
here = pathlib.Path({here!r})
argv = sys.argv[1:]
stdin = sys.stdin.buffer.read()
with (here / "calls.jsonl").open("a") as record:
    stdin = base64.b64encode(stdin).decode()
    entry = {{"argv": argv, "stdin": stdin, "docker_config": os.environ.get("DOCKER_CONFIG")}}
    record.write(json.dumps(entry) + "\\n")
if argv[0] == "info":
    print("27.3.1")
elif argv[0] == "build":
    print("#1 [internal] load build definition from Dockerfile", flush=True)
    print("#6 [3/5] RUN Rscript /tmp/rdeploy-build/install_packages.R", flush=True)
    if (here / "fail-build").exists():
        print("Error: dependency 'randomForest' is not available", flush=True)
        print("ERROR: process did not complete successfully: exit code: 1", flush=True)
        sys.exit(1)
    while (here / "hold-build").exists():
        time.sleep(0.05)
    print("#9 naming to done", flush=True)
elif argv[0] == "login":
    print("Login Succeeded")
elif argv[0] == "push":
    print("latest: digest: sha256:0000 size: 1234", flush=True)
    while (here / "hold-push").exists():
        time.sleep(0.05)
"""


class FakeDocker:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def calls(self) -> list[dict[str, Any]]:
        path = self.directory / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def commands(self) -> list[str]:
        return [call["argv"][0] for call in self.calls()]

    def hold(self) -> None:
        (self.directory / "hold-build").touch()

    def release(self) -> None:
        (self.directory / "hold-build").unlink(missing_ok=True)
        (self.directory / "hold-push").unlink(missing_ok=True)

    def fail_builds(self) -> None:
        (self.directory / "fail-build").touch()


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Any:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(RECORDER.format(python=sys.executable, here=str(tmp_path)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings.RDEPLOY_IMAGE_BUILDER = "docker"
    docker = FakeDocker(tmp_path)
    yield docker
    docker.release()


def create(owner: User, api_client_for: Any, name: str = "iris-docker") -> Deployment:
    model = ready_model(owner)
    response = api_client_for(owner).post(
        "/api/v1/endpoints/", {"name": name, "model": model.pk, "target": "sagemaker"}, format="json"
    )
    assert response.status_code == 202, response.content
    return latest(name)


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


def test_the_docker_builder_builds_the_context_logs_in_with_the_password_on_stdin_and_pushes(
    aws: MotoServer, owner: User, api_client_for: Any, fake_docker: FakeDocker
) -> None:
    fake_docker.hold()
    deployment = create(owner, api_client_for)

    # The build runs detached: the step waits, and its lines reach the log meanwhile.
    deadline = time.monotonic() + 30
    while "#6 [3/5] RUN Rscript /tmp/rdeploy-build/install_packages.R" not in build_lines(deployment):
        assert time.monotonic() < deadline, build_lines(deployment)
        step = advance_once(deployment)
        time.sleep(0.1)
    assert step.status == DeploymentStep.Status.RUNNING
    assert fake_docker.commands() == ["build"]
    fake_docker.release()
    deployment = drive(deployment)

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    context = image_build_context(deployment.model_version)
    repository_uri = aws_client("ecr").describe_repositories(repositoryNames=["rdeploy-runtime"])["repositories"][0][
        "repositoryUri"
    ]
    image = f"{repository_uri}:{context.tag}"
    build, login, push = fake_docker.calls()
    assert build["argv"] == ["build", "--pull", "--platform", "linux/amd64", "--tag", image, "-"]
    assert base64.b64decode(build["stdin"]) == context.tar_gz()
    token = aws_client("ecr").get_authorization_token()["authorizationData"][0]
    username, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    assert login["argv"] == ["login", "--username", username, "--password-stdin", token["proxyEndpoint"]]
    assert base64.b64decode(login["stdin"]).decode() == password
    assert not any(password in argument for call in fake_docker.calls() for argument in call["argv"])
    assert push["argv"] == ["push", image]
    # The login lives in a config private to this build, and is deleted with it.
    build_dir = docker_build_dir(deployment.resources["docker_build"])
    assert login["docker_config"] == push["docker_config"] == str(build_dir / "docker-config")
    assert not build_dir.exists()
    assert ExternalResource.objects.get(kind="docker_build").deleted_at is not None
    assert builds_started() == 0
    lines = build_lines(deployment)
    assert "#9 naming to done" in lines
    assert "latest: digest: sha256:0000 size: 1234" in lines
    assert deployment.steps.get(name="build_image").message == f"Built and pushed {image} with Docker."
    assert (
        aws_client("sagemaker").describe_model(ModelName=f"rdeploy-iris-docker-d{deployment.pk}")["PrimaryContainer"][
            "Image"
        ]
        == image
    )


def test_a_failing_docker_build_fails_the_step_with_its_last_lines(
    aws: MotoServer, owner: User, api_client_for: Any, fake_docker: FakeDocker
) -> None:
    fake_docker.fail_builds()

    deployment = drive(create(owner, api_client_for))

    assert deployment.status == Deployment.Status.FAILED
    message = deployment.steps.get(name="build_image").message
    assert message.startswith("The image build failed: docker build exited with status 1.")
    assert "Error: dependency 'randomForest' is not available" in message
    assert "ERROR: process did not complete successfully: exit code: 1" in message
    assert fake_docker.commands() == ["build"]
    assert not docker_build_dir(deployment.resources["docker_build"]).exists()
    assert "Error: dependency 'randomForest' is not available" in build_lines(deployment)


def test_an_image_already_in_ecr_starts_no_docker_build(
    aws: MotoServer, owner: User, api_client_for: Any, fake_docker: FakeDocker
) -> None:
    model = ready_model(owner)
    aws_client("ecr").create_repository(repositoryName="rdeploy-runtime")
    push_image(f"rdeploy-runtime:{image_build_context(model).tag}")
    api_client_for(owner).post(
        "/api/v1/endpoints/", {"name": "iris-docker", "model": model.pk, "target": "sagemaker"}, format="json"
    )

    deployment = drive(latest("iris-docker"))

    assert deployment.status == Deployment.Status.SUCCEEDED, deployment.error
    assert deployment.steps.get(name="build_image").status == DeploymentStep.Status.SKIPPED
    assert fake_docker.calls() == []


def test_the_docker_builder_without_a_docker_command_fails_naming_the_setting(
    aws: MotoServer, owner: User, api_client_for: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.RDEPLOY_IMAGE_BUILDER = "docker"
    monkeypatch.setenv("PATH", "/nonexistent")

    deployment = drive(create(owner, api_client_for))

    assert deployment.status == Deployment.Status.FAILED
    message = deployment.steps.get(name="build_image").message
    assert "RDEPLOY_IMAGE_BUILDER=docker" in message
    assert "no docker command" in message


def test_the_engine_counts_as_available_only_when_docker_info_answers(
    fake_docker: FakeDocker, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert docker_engine.is_available()
    assert fake_docker.calls()[0]["argv"][0] == "info"

    monkeypatch.setenv("PATH", "/nonexistent")
    assert not docker_engine.is_available()


def wait_until(predicate: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def held_build(owner: User, api_client_for: Any, fake_docker: FakeDocker) -> tuple[Deployment, str]:
    """A rollout whose docker build runs (held) in the background; and the job's identifier."""
    fake_docker.hold()
    deployment = create(owner, api_client_for)
    deadline = time.monotonic() + 30
    while not fake_docker.calls():
        assert time.monotonic() < deadline
        advance_once(deployment)
        time.sleep(0.1)
    deployment.refresh_from_db()
    return deployment, docker_engine.job_marker(docker_build_dir(deployment.resources["docker_build"]))


def test_a_build_step_rerun_after_a_crash_replaces_the_build_it_had_started(
    aws: MotoServer, owner: User, api_client_for: Any, fake_docker: FakeDocker
) -> None:
    deployment, identifier = held_build(owner, api_client_for, fake_docker)
    first = processes.find(identifier)
    assert first
    # The worker died after starting the build and before recording it.
    step = deployment.steps.get(name="build_image")
    step.intent.pop("docker")
    DeploymentStep.objects.filter(pk=step.pk).update(intent=step.intent)

    advance_once(deployment)

    wait_until(lambda: len(fake_docker.calls()) == 2)
    assert fake_docker.commands() == ["build", "build"]
    assert processes.find(identifier)
    assert not set(first) & set(processes.find(identifier))
    fake_docker.release()
    assert drive(deployment).status == Deployment.Status.SUCCEEDED
    assert fake_docker.commands() == ["build", "build", "login", "push"]
    assert processes.find(identifier) == []


def test_deleting_the_endpoint_stops_a_running_docker_build_and_removes_its_files(
    aws: MotoServer, owner: User, api_client_for: Any, fake_docker: FakeDocker
) -> None:
    deployment, identifier = held_build(owner, api_client_for, fake_docker)
    assert processes.find(identifier)
    Deployment.objects.filter(pk=deployment.pk).update(lease_until=None)

    assert api_client_for(owner).delete("/api/v1/endpoints/iris-docker/").status_code == 202
    teardown = drive(latest("iris-docker"))

    assert teardown.status == Deployment.Status.SUCCEEDED, teardown.error
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.FAILED
    assert processes.find(identifier) == []
    assert not docker_build_dir(deployment.resources["docker_build"]).exists()
    assert ExternalResource.objects.get(kind="docker_build").deleted_at is not None
    assert fake_docker.commands() == ["build"]


def test_a_push_that_lands_between_two_polls_counts_as_built(
    aws: MotoServer, owner: User, api_client_for: Any, fake_docker: FakeDocker
) -> None:
    (fake_docker.directory / "hold-push").touch()
    deployment = create(owner, api_client_for)
    deadline = time.monotonic() + 30
    while "push" not in fake_docker.commands():
        assert time.monotonic() < deadline
        advance_once(deployment)
        time.sleep(0.1)
    deployment.refresh_from_db()
    marker = docker_engine.job_marker(docker_build_dir(deployment.resources["docker_build"]))
    assert processes.find(marker)
    # The image reaches ECR before the push job has ended.
    push_image(deployment.resources["ecr_image"])

    step = advance_once(deployment)

    assert step.status == DeploymentStep.Status.SUCCEEDED
    assert step.message.startswith("Built and pushed ")
    assert processes.find(marker) == []
    assert not docker_build_dir(deployment.resources["docker_build"]).exists()
