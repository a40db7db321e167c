"""The Docker engine: the one module that runs the ``docker`` CLI.

Builds and pushes take minutes, so they run as *jobs*: a ``docker`` command started
detached (through ``deployer.integrations.processes``, so it outlives the worker that
started it), its output appended to ``<job dir>/output.log`` and its exit status written
to ``<job dir>/<phase>.status`` when it ends. A step starts a job, then polls it with
``job_state`` and streams ``read_output`` in short waits; nothing blocks a worker.

The registry password goes to ``docker login`` on stdin, never on a command line (where
``ps`` would show it), into a Docker config directory private to the job
(``DOCKER_CONFIG=<job dir>/docker-config``) that ``remove_job`` deletes with the job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deployer.integrations import processes

OUTPUT = "output.log"
# Variables that say which engine the CLI talks to; the job inherits nothing else.
ENGINE_VARIABLES = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_API_VERSION")
# SageMaker's instances (and CodeBuild's image) are x86_64: build for that on any worker.
PLATFORM = "linux/amd64"
# Runs the command with stdin from $1 and writes its exit status to $0 when it ends
# (atomically, by rename), so a poll tells "still running" from "ended with status N".
_WRAPPER = 'input=$1; shift; "$@" < "$input"; status=$?; echo $status > "$0.tmp" && mv "$0.tmp" "$0"'


class DockerUnavailable(Exception):
    """No ``docker`` CLI on PATH, or the engine does not answer; the message says which."""


class DockerCommandFailed(Exception):
    """A short ``docker`` command (login, info) failed; the message quotes its output."""


@dataclass(frozen=True)
class Job:
    """A detached ``docker`` command: ``phase`` names its status file in ``directory``."""

    directory: Path
    phase: str
    pid: int
    start_ticks: int


@dataclass(frozen=True)
class JobState:
    running: bool
    # None while running, and for a job that vanished without a status (e.g. a reboot).
    exit_code: int | None


def docker_cli() -> str:
    path = shutil.which("docker")
    if path is None:
        raise DockerUnavailable("there is no docker command on this worker's PATH")
    return path


def _engine_env() -> dict[str, str]:
    env = {name: os.environ[name] for name in ENGINE_VARIABLES if name in os.environ}
    # Jobs run with HOME set to their directory: keep the worker's own Docker config
    # (contexts, registry mirrors) unless a job uses a private one.
    env["DOCKER_CONFIG"] = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return env


def is_available(*, timeout: float = 10) -> bool:
    """True when a ``docker`` CLI exists and its engine answers ``docker info``."""
    try:
        cli = docker_cli()
    except DockerUnavailable:
        return False
    try:
        result = subprocess.run(
            [cli, "info", "--format", "{{.ServerVersion}}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **_engine_env()},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def job_marker(directory: Path) -> str:
    """The ``processes`` marker of a job: its directory, unique per data directory, so two
    installations (or test sessions) on one machine never stop each other's jobs."""
    return f"docker-job:{directory.resolve()}"


def _config_dir(directory: Path) -> Path:
    return directory / "docker-config"


def _start(directory: Path, phase: str, arguments: list[str], env: dict[str, str], stdin: Path | None = None) -> Job:
    cli = docker_cli()
    status = directory / f"{phase}.status"
    status.unlink(missing_ok=True)
    # A rerun after a crash replaces the job it may have started already.
    processes.stop(job_marker(directory), grace=1)
    started = processes.start(
        identifier=job_marker(directory),
        command=["sh", "-c", _WRAPPER, str(status), str(stdin or os.devnull), cli, *arguments],
        env={**_engine_env(), **env},
        cwd=directory,
        log_path=directory / OUTPUT,
    )
    return Job(directory, phase, started.pid, started.start_ticks)


def start_build(*, directory: Path, context_tar_gz: bytes, image: str, platform: str | None = PLATFORM) -> Job:
    """Start ``docker build`` of ``context_tar_gz`` (sent on stdin) tagged ``image``, for
    ``platform`` (None: the engine's own, for images that run on this machine)."""
    directory.mkdir(parents=True, exist_ok=True)
    context = directory / "context.tar.gz"
    context.write_bytes(context_tar_gz)
    platform_arguments = ["--platform", platform] if platform else []
    # `docker build -` reads the context from stdin: the job's stdin is the file.
    return _start(
        directory,
        "build",
        ["build", "--pull", *platform_arguments, "--tag", image, "-"],
        # Plain progress output: one readable line per build step, not a terminal UI.
        {"BUILDKIT_PROGRESS": "plain"},
        stdin=context,
    )


def login(*, directory: Path, registry: str, username: str, password: str, timeout: float = 60) -> None:
    """``docker login`` into the job's private config; the password goes on stdin."""
    config = _config_dir(directory)
    config.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        result = subprocess.run(
            [docker_cli(), "login", "--username", username, "--password-stdin", registry],
            input=password.encode(),
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **_engine_env(), "DOCKER_CONFIG": str(config)},
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise DockerCommandFailed(f"docker login to {registry} did not finish within {timeout:.0f} s") from error
    if result.returncode != 0:
        output = (result.stderr or result.stdout).decode("utf-8", "replace").strip()
        raise DockerCommandFailed(f"docker login to {registry} failed: {output[-500:]}")


def start_push(*, directory: Path, image: str) -> Job:
    """Start ``docker push image`` with the credentials ``login`` stored for this job."""
    return _start(directory, "push", ["push", image], {"DOCKER_CONFIG": str(_config_dir(directory))})


def image_present(image: str, *, timeout: float = 30) -> bool:
    """True when the engine has ``image`` locally."""
    result = subprocess.run(
        [docker_cli(), "image", "inspect", "--format", "{{.Id}}", image],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **_engine_env()},
        check=False,
    )
    return result.returncode == 0


def remove_container(name: str, *, timeout: float = 60) -> None:
    """``docker rm --force name``; a container that does not exist counts as removed."""
    result = subprocess.run(
        [docker_cli(), "rm", "--force", name],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **_engine_env()},
        check=False,
    )
    output = (result.stderr or result.stdout).decode("utf-8", "replace").strip()
    if result.returncode != 0 and "no such container" not in output.lower():
        raise DockerCommandFailed(f"docker rm {name} failed: {output[-500:]}")


def start_container(
    *,
    identifier: str,
    name: str,
    image: str,
    port: int,
    model_dir: Path,
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
) -> processes.StartedProcess:
    """Run ``image``'s ``serve`` in container ``name`` with ``model_dir`` mounted read-only at
    /opt/ml/model and its port 8080 published on 127.0.0.1:``port``.

    ``docker run`` stays attached, as a detached runtime process (``processes.start``):
    the container's output goes to ``log_path``, the client's liveness is the container's,
    and SIGTERM to it reaches the container (``--sig-proxy``). A leftover container of the
    same name (a crash) is removed first.
    """
    remove_container(name)
    variables = [argument for key, value in sorted(env.items()) for argument in ("--env", f"{key}={value}")]
    command = [
        docker_cli(),
        "run",
        "--rm",
        "--name",
        name,
        "--publish",
        f"127.0.0.1:{port}:8080",
        "--volume",
        f"{model_dir}:/opt/ml/model:ro",
        *variables,
        image,
        "serve",
    ]
    return processes.start(identifier=identifier, command=command, env=_engine_env(), cwd=cwd, log_path=log_path)


def job_state(job: Job) -> JobState:
    status = job.directory / f"{job.phase}.status"
    if processes.is_running(job.pid, job.start_ticks) and not status.exists():
        return JobState(running=True, exit_code=None)
    try:
        return JobState(running=False, exit_code=int(status.read_text().strip()))
    except (OSError, ValueError):
        return JobState(running=False, exit_code=None)


def read_output(directory: Path, offset: int) -> tuple[list[str], int]:
    """Complete output lines of the job after byte ``offset``, and the new offset."""
    return processes.read_log(directory / OUTPUT, offset)


def last_output(directory: Path, *, lines: int = 20) -> list[str]:
    return processes.tail(directory / OUTPUT, lines=lines)


def remove_job(directory: Path) -> None:
    """Stop the job if it still runs and delete its directory (context, output,
    credentials). Idempotent."""
    processes.stop(job_marker(directory), grace=2)
    shutil.rmtree(directory, ignore_errors=True)
