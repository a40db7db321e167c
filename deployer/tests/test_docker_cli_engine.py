"""The `docker` engine CLI (RDEPLOY_CONTAINER_CLI=docker) for real: the Docker CLI talking to
podman's Docker-compatible API (Docker API 1.41) on a socket of this session's, driving
inspection, a hostile model, a local endpoint's runtime and an image build through rdeploy's
own code, as a worker with a Docker Engine's socket (docker-compose.yml) drives them."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User

from deployer.integrations.containers import cli, images, runtimes
from deployer.models import ModelVersion
from deployer.services.images import serving_image_context, serving_image_ensure
from deployer.tests.intake_support import expected, rows_as_csv
from deployer.tests.test_inspection import inspect, upload
from deployer.tests.test_inspection_attacks import CONNECT, Listener, external_address, hostile_bundle
from testsupport.services import PodmanDockerApi

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def podman_docker_api() -> Iterator[PodmanDockerApi]:
    """podman's Docker API on a socket under the session's data directory."""
    service = PodmanDockerApi(Path(settings.DATA_DIR) / "podman-docker-api")
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

    version = inspect(upload(owner, "lm-docker", (case / "model.rds").read_bytes(), sample=rows_as_csv(wanted["rows"])))

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
        socket_path = wait_for_ping(name, socket_dir)

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
        later, _ = runtimes.read_logs(name, cursor)
        assert any("/ping" in line for line in later), later
    finally:
        runtimes.stop(name, grace=1)

    assert runtimes.state(name) is None
    assert runtimes.names(endpoint="docker-cli") == []


def wait_for_ping(name: str, socket_dir: Path, timeout: float = 90) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket_path = runtimes.lock_socket(socket_dir, group=os.getgid())
        except FileNotFoundError:
            time.sleep(0.05)
            continue
        try:
            if get(socket_path, "/ping")[0] == 200:
                return socket_path
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{name} did not answer /ping within {timeout} s: {runtimes.read_logs(name, None)[0][-20:]}")


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
