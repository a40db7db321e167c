"""Images through the engine CLI (podman or docker, ``cli``): build, tag, log in, push, look up.

Builds and pushes take minutes, so the pipeline runs them as *jobs*: an engine command
started detached (through ``deployer.integrations.processes``, so it outlives the worker
that started it), its output appended to ``<job dir>/output.log`` and its exit status
written to ``<job dir>/<phase>.status`` when it ends. A step starts a job, then polls it
with ``job_state`` and streams ``read_output`` in short waits; nothing blocks a worker.
``build`` is the synchronous form, with a timeout, for callers that need an image now.

Contexts are directories (``BuildContext.write_to``): ``podman build -`` reads a
Containerfile from stdin, not a context archive as ``docker build -`` does. No ``--pull``:
the base is a local image (scripts/base_image.sh), pulled only when missing (both
engines' default).

The registry password goes to ``login`` on stdin, never on a command line (where ``ps``
would show it), into a config directory private to the job (``DOCKER_CONFIG`` for docker,
``REGISTRY_AUTH_FILE`` for podman, both ``<job dir>/registry-auth``) that ``remove_job``
deletes with the job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from deployer.build_context import BuildContext
from deployer.integrations import processes
from deployer.integrations.containers import cli

OUTPUT = "output.log"
# A poll streams at most this many of a job's new output lines (into a deployment's log).
MAX_OUTPUT_LINES = 2000
# How long a stopped job's engine may take to remove its build container.
INTERRUPT_GRACE_SECONDS = 5.0
# Runs the command and writes its exit status to $0 when it ends (atomically, by rename),
# so a poll tells "still running" from "ended with status N".
_WRAPPER = '"$@"; status=$?; echo $status > "$0.tmp" && mv "$0.tmp" "$0"'


class ImageBuildFailed(Exception):
    """A build failed or timed out; ``lines`` holds its last output lines."""

    def __init__(self, message: str, lines: list[str]) -> None:
        super().__init__(message)
        self.lines = lines


@dataclass(frozen=True)
class Job:
    """A detached engine command: ``phase`` names its status file in ``directory``."""

    directory: Path
    phase: str
    pid: int
    start_ticks: int


@dataclass(frozen=True)
class JobState:
    running: bool
    # None while running, and for a job that vanished without a status (e.g. a reboot).
    exit_code: int | None


def _build_arguments(
    *, context_dir: Path, base_image: str, tags: list[str], platform: str | None, no_cache: bool = False
) -> list[str]:
    arguments = ["build", "--build-arg", f"BASE_IMAGE={base_image}"]
    if no_cache:
        arguments.append("--no-cache")
    if settings.CONTAINER_CLI == "podman":
        # Docker's manifest and config format (podman's default is OCI): what the
        # docker engine builds too, so ECR and SageMaker get one kind of image either way.
        arguments += ["--format", "docker"]
    if platform:
        arguments += ["--platform", platform]
    for tag in tags:
        arguments += ["--tag", tag]
    return [*arguments, str(context_dir)]


def _auth_env(directory: Path) -> dict[str, str]:
    auth = directory / "registry-auth"
    return {"DOCKER_CONFIG": str(auth), "REGISTRY_AUTH_FILE": str(auth / "config.json")}


def build(
    *, context: BuildContext, tags: list[str], timeout: float, platform: str | None = None, no_cache: bool = False
) -> None:
    """Build ``context`` now, tagged ``tags``; ImageBuildFailed with its last lines if it
    fails or takes longer than ``timeout`` seconds. A job waited for, so a build that
    times out (or whose caller dies) is stopped as jobs are, leaving nothing running."""
    with tempfile.TemporaryDirectory(prefix="rdeploy-build-") as scratch:
        directory = Path(scratch)
        try:
            job = start_build(directory=directory, context=context, tags=tags, platform=platform, no_cache=no_cache)
            deadline = time.monotonic() + timeout
            while (state := job_state(job)).running and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            _stop(directory, grace=2)
        lines = last_output(directory)
    if state.running:
        raise ImageBuildFailed(f"building {tags[0]} took longer than {timeout:.0f} s", lines)
    if state.exit_code != 0:
        raise ImageBuildFailed(
            f"building {tags[0]} failed ({settings.CONTAINER_CLI} build exited with status {state.exit_code})", lines
        )


def job_marker(directory: Path) -> str:
    """The ``processes`` marker of a job: its directory, unique per data directory, so two
    installations (or test sessions) on one machine never stop each other's jobs."""
    return f"image-job:{directory.resolve()}"


def _stop(directory: Path, *, grace: float) -> None:
    """Stop a job and everything it started. Ctrl-C to the engine command first (podman
    then exits, removing the build's container only sometimes); then processes.stop, and
    SIGKILL for the processes below the job (podman 4.3 leaves a RUN step running after
    SIGTERM, and often after Ctrl-C; killing its first process ends its PID namespace).
    Buildah's working containers of the stopped build stay in storage (docs/sagemaker.md)."""
    marker = job_marker(directory)
    job = processes.find(marker)
    below = processes.descendants(job)
    engine = [pid for pid in job if processes.command_name(pid) == settings.CONTAINER_CLI]
    for pid in engine:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
    while time.monotonic() < deadline and set(engine) & set(processes.find(marker)):
        time.sleep(0.1)
    processes.stop(marker, grace=grace)
    for pid, ticks in below.items():
        if processes.is_running(pid, ticks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _start(directory: Path, phase: str, arguments: list[str], env: dict[str, str]) -> Job:
    # A rerun after a crash replaces the job it may have started already (stopped before
    # its status goes, or its last words would land in the new job's status).
    _stop(directory, grace=1)
    status = directory / f"{phase}.status"
    status.unlink(missing_ok=True)
    started = processes.start(
        identifier=job_marker(directory),
        command=["sh", "-c", _WRAPPER, str(status), cli.engine_cli(), *arguments],
        env={**cli.engine_env(), **env},
        cwd=directory,
        log_path=directory / OUTPUT,
    )
    return Job(directory, phase, started.pid, started.start_ticks)


def start_build(
    *, directory: Path, context: BuildContext, tags: list[str], platform: str | None = None, no_cache: bool = False
) -> Job:
    """Start building ``context`` (written to ``directory/context``) tagged ``tags``, for
    ``platform`` (None: the engine's own, for images that run on this machine); ``no_cache``
    ignores the engine's layer cache (the benchmark's cold build)."""
    context_dir = directory / "context"
    shutil.rmtree(context_dir, ignore_errors=True)
    context_dir.mkdir(parents=True)
    context.write_to(context_dir)
    arguments = _build_arguments(
        context_dir=context_dir, base_image=context.base_image, tags=tags, platform=platform, no_cache=no_cache
    )
    # Plain progress output from docker: one readable line per build step, not a terminal UI.
    return _start(directory, "build", arguments, {"BUILDKIT_PROGRESS": "plain"})


def login(*, directory: Path, registry: str, username: str, password: str, timeout: float = 60) -> None:
    """Log in to ``registry`` into the job's private config; the password goes on stdin."""
    env = _auth_env(directory)
    Path(env["DOCKER_CONFIG"]).mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        result = cli.run(
            ["login", "--username", username, "--password-stdin", registry],
            input=password.encode(),
            timeout=timeout,
            env=env,
        )
    except cli.EngineCommandFailed as error:
        raise cli.EngineCommandFailed(f"login to {registry}: {error}") from error
    if result.returncode != 0:
        raise cli.EngineCommandFailed(f"login to {registry} failed: {cli.output_of(result)}")


def start_push(*, directory: Path, image: str) -> Job:
    """Start pushing ``image`` with the credentials ``login`` stored for this job."""
    return _start(directory, "push", ["push", image], _auth_env(directory))


def tag(source: str, target: str) -> None:
    cli.check(["tag", source, target])


def image_present(image: str) -> bool:
    """True when the engine has ``image`` locally."""
    return cli.run(["image", "inspect", "--format", "{{.Id}}", image], timeout=30).returncode == 0


def architecture(image: str) -> str:
    """The image's CPU architecture as the engine names it (amd64, arm64)."""
    return cli.check(["image", "inspect", "--format", "{{.Architecture}}", image], timeout=30).strip()


def job_state(job: Job) -> JobState:
    status = job.directory / f"{job.phase}.status"
    if processes.is_running(job.pid, job.start_ticks) and not status.exists():
        return JobState(running=True, exit_code=None)
    try:
        return JobState(running=False, exit_code=int(status.read_text().strip()))
    except (OSError, ValueError):
        return JobState(running=False, exit_code=None)


def read_output(directory: Path, offset: int, *, max_lines: int = MAX_OUTPUT_LINES) -> tuple[list[str], int]:
    """Complete output lines of the job after byte ``offset`` (the last ``max_lines`` of
    them, after a line saying how many were skipped), and the new offset."""
    lines, new_offset = processes.read_log(directory / OUTPUT, offset)
    skipped = max(0, len(lines) - max_lines)
    return ([f"… {skipped} build log lines skipped"] if skipped else []) + lines[skipped:], new_offset


def last_output(directory: Path, *, lines: int = 20) -> list[str]:
    return processes.tail(directory / OUTPUT, lines=lines)


def remove_job(directory: Path) -> None:
    """Stop the job if it still runs and delete its directory (context, output,
    credentials). Idempotent."""
    _stop(directory, grace=2)
    shutil.rmtree(directory, ignore_errors=True)
