"""The `docker` engine CLI (RDEPLOY_CONTAINER_CLI=docker) for real: the Docker CLI talking to
podman's Docker-compatible API (Docker API 1.41) on a socket of this session's, driving
inspection, hostile models, a local endpoint's runtime, an image build and a push through
rdeploy's own code, as a worker with a Docker Engine's socket (docker-compose.yml) drives them."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from deployer.integrations.containers import cli, images, runtimes
from deployer.models import ModelVersion
from deployer.services.images import serving_image_ensure
from deployer.serving_images import serving_image_context
from deployer.tests.test_inspection import inspect, upload
from deployer.tests.test_inspection_attacks import CONNECT, Listener, external_address, hostile_bundle
from testsupport.r_models import expected, rows_csv
from testsupport.runtimes import locked_socket_answering
from testsupport.services import OciRegistry, PodmanDockerApi

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def oci_registry() -> Iterator[OciRegistry]:
    registry = OciRegistry(Path(settings.DATA_DIR) / "docker-cli-registry")
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def podman_docker_api(oci_registry: OciRegistry) -> Iterator[PodmanDockerApi]:
    """podman's Docker API on a socket under the session's data directory (pushing to the
    plain-HTTP test registry: production registries are HTTPS)."""
    service = PodmanDockerApi(
        Path(settings.DATA_DIR) / "podman-docker-api",
        env={"CONTAINERS_REGISTRIES_CONF": str(oci_registry.registries_conf)},
    )
    service.start()
    yield service
    service.stop()


@pytest.fixture(autouse=True)
def docker_cli(podman_docker_api: PodmanDockerApi, settings: Any, monkeypatch: pytest.MonkeyPatch) -> PodmanDockerApi:
    """Every engine command of the test runs `docker`, reaching podman's API by DOCKER_HOST."""
    if shutil.which("docker") is None:
        pytest.fail("no docker CLI on PATH: scripts/bootstrap.sh (make test) installs one")
    settings.CONTAINER_CLI = "docker"
    monkeypatch.setenv("DOCKER_HOST", podman_docker_api.docker_host)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    # podman's API has no BuildKit: the classic builder, even where buildx is installed.
    monkeypatch.setenv("DOCKER_BUILDKIT", "0")
    return podman_docker_api


def test_the_engine_answers_through_the_docker_cli_and_says_why_when_it_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert cli.engine_cli() == shutil.which("docker")
    assert cli.engine_problem() is None
    # Really the docker CLI against podman's Docker API, not podman's own CLI.
    assert cli.check(["version", "--format", "{{.Server.APIVersion}}"]).strip() == "1.41"

    monkeypatch.setenv("DOCKER_HOST", f"unix://{settings.DATA_DIR}/no-engine-here.sock")
    problem = cli.engine_problem()
    assert problem is not None
    assert "the container engine (docker) does not answer" in problem


@pytest.mark.django_db
def test_a_real_model_is_inspected_ready_under_the_docker_cli(owner: User, trained_models: Path) -> None:
    case = trained_models / "lm"
    wanted = expected(case)

    version = inspect(upload(owner, "lm-docker", (case / "model.rds").read_bytes(), sample=rows_csv(wanted["rows"])))

    assert version.status == ModelVersion.Status.READY, version.status_reason
    assert "lm" in version.inspection["class"]
    assert version.inspection["sandbox"]["engine"] == "docker"
    predictions = version.inspection["example"]["predictions"]["predictions"]
    assert predictions == pytest.approx(wanted["predictions"][: len(predictions)], rel=1e-9)
    assert cli.container_names(role="inspection") == []


@pytest.mark.django_db
def test_a_hostile_model_reaches_neither_redis_nor_this_machine_under_the_docker_cli(
    owner: User, trained_models: Path
) -> None:
    listener = Listener()
    try:
        bundle = hostile_bundle(
            trained_models,
            CONNECT,
            redis_port=os.environ["RDEPLOY_TEST_REDIS_PORT"],
            address=external_address(),
            listener_port=listener.port,
        )
        version = inspect(upload(owner, "caller-docker", bundle))
    finally:
        listener.close()

    assert version.status == ModelVersion.Status.INVALID
    assert "NETWORK: 127.0.0.1 refused" in version.status_reason
    assert "CONNECTED" not in version.status_reason
    assert listener.connections == 0
    assert cli.container_names(role="inspection") == []


# What the other confinement flags must have done, reported by the model's own code: a
# read-only root with no writable /tmp, /var/tmp or /run (podman's Docker API mounts writable
# ones in --read-only containers unless rdeploy mounts read-only ones there), no exec from
# the writable places, an unprivileged uid without capabilities or new privileges.
CONFINEMENT = """
  write <- function(path) tryCatch({
    writeLines("x", path)
    paste(path, "WRITTEN")
  }, error = function(e) paste(path, "denied"), warning = function(w) paste(path, "denied"))
  run <- function(dir) {
    copied <- file.copy("/bin/true", file.path(dir, "true"))
    paste(dir, if (copied) paste("exec status", system(file.path(dir, "true"))) else "not copied")
  }
  status <- readLines("/proc/self/status")
  stop("CONFINED: ", paste(c(
    write("/tmp/planted"), write("/var/tmp/planted"), write("/run/planted"),
    run(Sys.getenv("TMPDIR")), run("/dev/shm"), run("/tmp"),
    grep("^(Uid|CapEff|NoNewPrivs):", status, value = TRUE)
  ), collapse = "; "))
"""


@pytest.mark.django_db
def test_a_hostile_model_finds_no_writable_root_exec_or_privilege_under_the_docker_cli(
    owner: User, trained_models: Path
) -> None:
    version = inspect(upload(owner, "confined-docker", hostile_bundle(trained_models, CONFINEMENT)))

    reason = version.status_reason
    assert version.status == ModelVersion.Status.INVALID
    assert "CONFINED: " in reason, reason
    for path in ("/tmp/planted", "/var/tmp/planted", "/run/planted"):
        assert f"{path} denied" in reason
    assert "WRITTEN" not in reason
    # Copied into the noexec tmpfs and /dev/shm, the program does not run (126: not executable).
    assert "/scratch/temp exec status 126" in reason
    assert "/dev/shm exec status 126" in reason
    assert "/tmp not copied" in reason
    uid = int(reason.split("Uid:")[1].split()[0])
    assert uid >= 1_000_000
    assert "CapEff:\t0000000000000000" in reason
    assert "NoNewPrivs:\t1" in reason
    assert cli.container_names(role="inspection") == []


def test_log_lines_sharing_a_whole_second_stamp_are_each_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """podman's Docker API stamps `logs --timestamps` lines in whole seconds (podman's own CLI
    and Docker's in nanoseconds): stdout and stderr lines of one second, read in two polls."""
    second = "2025-01-02T03:04:05Z"
    outputs = iter(
        [
            ([f"{second} out 1"], [f"{second} err 1", f"{second} err 2"]),
            ([f"{second} out 1", f"{second} out 2"], [f"{second} err 1", f"{second} err 2"]),
            (
                [f"{second} out 1", f"{second} out 2", "2025-01-02T03:04:06Z out 3"],
                [f"{second} err 1", f"{second} err 2"],
            ),
        ]
    )

    def logs(arguments: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        stdout, stderr = next(outputs)
        return subprocess.CompletedProcess(
            arguments, 0, "\n".join([*stdout, ""]).encode(), "\n".join([*stderr, ""]).encode()
        )

    monkeypatch.setattr(cli, "run", logs)

    first, cursor = runtimes.read_logs("runtime", None)
    second_poll, cursor = runtimes.read_logs("runtime", cursor)
    third_poll, _ = runtimes.read_logs("runtime", cursor)

    assert sorted(first) == ["err 1", "err 2", "out 1"]
    assert second_poll == ["out 2"]
    assert third_poll == ["out 3"]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def get(path: Path, url: str) -> tuple[int, bytes]:
    connection = UnixHTTPConnection(path)
    try:
        connection.request("GET", url)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_local_endpoint_runtime_answers_through_its_locked_socket_and_stop_removes_it(
    trained_models: Path,
) -> None:
    image = serving_image_ensure(packages=[])
    work = Path(settings.DATA_DIR) / f"docker-runtime-{secrets.token_hex(4)}"
    model_dir = work / "model"
    model_dir.mkdir(parents=True)
    shutil.copy(trained_models / "lm" / "model.rds", model_dir / "model.rds")
    for path in (work, model_dir, model_dir / "model.rds"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    socket_dir = work / "socket"
    name = f"rdeploy-test-docker-runtime-{secrets.token_hex(4)}"

    try:
        runtimes.start(
            name=name,
            image=image,
            command=["serve"],
            endpoint="docker-cli",
            deployment=1,
            model_dir=model_dir,
            socket_dir=socket_dir,
            env={"RDEPLOY_MAX_WORKERS": "1"},
            memory_mb=1024,
            cpus=1.0,
        )
        socket_path = locked_socket_answering(name, socket_dir)

        assert (socket_dir.stat().st_uid, socket_dir.stat().st_mode & 0o777) == (0, 0o755)
        assert runtimes.state(name) == runtimes.ContainerState(running=True, exit_code=0, oom_killed=False)
        assert runtimes.names(endpoint="docker-cli") == [name]
        config = json.loads(cli.check(["inspect", "--type", "container", name]))[0]
        host = config["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] == 1024 * 1024**2
        assert host["PidsLimit"] == runtimes.PIDS_LIMIT
        uid = runtimes.runtime_uid(1)
        assert config["Config"]["User"] == f"{uid}:{uid}"
        # The only writable places: the /tmp tmpfs (noexec) and, until the lock, the socket's.
        probe = cli.run(
            [
                "exec",
                name,
                "sh",
                "-c",
                "for d in /tmp /var/tmp /run /run/rdeploy /opt/ml/model; do "
                "touch $d/p 2>/dev/null && echo $d writable; done; "
                "cp /bin/true /tmp/true && /tmp/true || echo /tmp noexec",
            ]
        )
        assert probe.stdout.decode().split("\n")[:2] == ["/tmp writable", "/tmp noexec"], probe
        # The runtime's output, read through the engine's `logs --timestamps`.
        lines, cursor = runtimes.read_logs(name, None)
        assert lines
        assert cursor is not None
        assert any("/ping" in line for line in lines), lines
        assert get(socket_path, "/ping")[0] == 200
        # HAProxy logs the request once it is done: the line may come a moment later.
        later: list[str] = []
        deadline = time.monotonic() + 10
        while not any("/ping" in line for line in later) and time.monotonic() < deadline:
            time.sleep(0.2)
            more, cursor = runtimes.read_logs(name, cursor)
            later += more
        assert [line for line in later if "/ping" in line] == [later[-1]], later
    finally:
        runtimes.stop(name, grace=1)

    assert runtimes.state(name) is None
    assert runtimes.names(endpoint="docker-cli") == []


def test_an_image_builds_with_the_docker_cli() -> None:
    tag = f"localhost/rdeploy-test-docker-build:{secrets.token_hex(4)}"
    context = serving_image_context(packages=[])
    try:
        images.build(context=context, tags=[tag], timeout=600, no_cache=True)
        assert images.image_present(tag)
        assert images.architecture(tag) == images.architecture(settings.BASE_IMAGE)
        # The runtime is in it: the image runs `serve`'s script.
        assert cli.check(
            ["run", "--rm", "--network", "none", "--entrypoint", "ls", tag, "/usr/local/bin/serve"]
        ).strip()
    finally:
        cli.run(["image", "rm", tag])
    assert not images.image_present(tag)


def test_an_image_is_pushed_with_the_docker_cli_and_its_login_stays_in_the_job(oci_registry: OciRegistry) -> None:
    repository = "rdeploy-docker-cli"
    tag = secrets.token_hex(4)
    image = f"{oci_registry.address}/{repository}:{tag}"
    directory = Path(settings.DATA_DIR) / f"docker-push-{tag}"
    directory.mkdir()
    images.tag(settings.BASE_IMAGE, image)
    try:
        images.login(directory=directory, registry=f"https://{oci_registry.address}", username="AWS", password="pw")
        # Docker's config, private to the job: the login went nowhere else.
        assert oci_registry.address in json.loads((directory / "registry-auth" / "config.json").read_text())["auths"]
        job = images.start_push(directory=directory, image=image)
        deadline = time.monotonic() + 300
        while (state := images.job_state(job)).running and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state.exit_code == 0, images.last_output(directory)
        assert tag in (oci_registry.tags(repository) or [])
    finally:
        images.remove_job(directory)
        cli.run(["image", "rm", image])
    assert not directory.exists()
