"""Which container engine rdeploy talks to, and the short commands every part shares.

The engine is a CLI with Docker's dialect: ``podman`` (the embedded default, daemonless,
configured by config/containers.conf) or ``docker`` (a Docker Engine, e.g. the host's
through compose's socket). Both accept every flag used here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from django.conf import settings

# Every container and image rdeploy makes carries these labels, so removal and the
# reaper find what one installation owns without a database.
LABEL_INSTALLATION = "rdeploy.installation"
LABEL_ROLE = "rdeploy.role"
# Variables that say which engine the CLI talks to; commands inherit nothing else.
ENGINE_VARIABLES = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "DOCKER_API_VERSION",
    # docker's builder: BuildKit (buildx) or the classic one (0), the only one podman's API serves.
    "DOCKER_BUILDKIT",
    "CONTAINER_HOST",
    "XDG_RUNTIME_DIR",
    # podman's registries (e.g. a plain-http test registry marked insecure: images.py).
    "CONTAINERS_REGISTRIES_CONF",
)


# Where podman (and its Docker API) mounts writable tmpfs in a --read-only container.
READ_ONLY_MASKS = ("/tmp", "/var/tmp", "/run")  # noqa: S108 (paths inside the container)


class EngineUnavailable(Exception):
    """No engine CLI on PATH, or the engine does not answer; the message says which."""


class EngineCommandFailed(Exception):
    """A short engine command failed; the message quotes its output."""


def engine_cli() -> str:
    name = settings.CONTAINER_CLI
    path = shutil.which(name)
    if path is None:
        raise EngineUnavailable(
            f"there is no {name} command on this server's PATH (RDEPLOY_CONTAINER_CLI={name}): "
            "model code runs only in containers, so inspection and local endpoints cannot run"
        )
    return path


def engine_env() -> dict[str, str]:
    """The environment of every engine command: PATH, HOME and the engine's own variables."""
    env = {name: os.environ[name] for name in ENGINE_VARIABLES if name in os.environ}
    env["PATH"] = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = os.environ.get("HOME", "/root")
    # Passed on only when set: podman refuses every `run` when DOCKER_CONFIG names a
    # directory without a config.json, and both CLIs find ~/.docker on their own.
    if "DOCKER_CONFIG" in os.environ:
        env["DOCKER_CONFIG"] = os.environ["DOCKER_CONFIG"]
    if settings.CONTAINER_CLI == "podman":
        env["CONTAINERS_CONF"] = os.environ.get("CONTAINERS_CONF") or str(settings.CONTAINERS_CONF)
    return env


def run(
    arguments: Sequence[str],
    *,
    timeout: float = 60,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a short engine command (with ``env`` added to engine_env()) and return it
    whatever its exit status."""
    cli = engine_cli()
    try:
        return subprocess.run(
            [cli, *arguments],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env={**engine_env(), **(env or {})},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EngineCommandFailed(
            f"`{settings.CONTAINER_CLI} {arguments[0]}` did not finish within {timeout:.0f} s"
        ) from exc


def output_of(result: subprocess.CompletedProcess[bytes]) -> str:
    return (result.stderr or result.stdout).decode("utf-8", "replace").strip()[-500:]


def check(arguments: Sequence[str], *, timeout: float = 60) -> str:
    """Run a short engine command; its stdout, or EngineCommandFailed with its output."""
    result = run(arguments, timeout=timeout)
    if result.returncode != 0:
        raise EngineCommandFailed(f"`{settings.CONTAINER_CLI} {' '.join(arguments[:2])}` failed: {output_of(result)}")
    return result.stdout.decode("utf-8", "replace")


def engine_problem(*, timeout: float = 10) -> str | None:
    """None when the engine answers and has the base image; else why not, in one sentence
    (shown by /readyz and in every refusal to run model code)."""
    try:
        result = run(["image", "inspect", "--format", "{{.Id}}", settings.BASE_IMAGE], timeout=timeout)
    except (EngineUnavailable, EngineCommandFailed) as exc:
        return str(exc)
    if result.returncode == 0:
        return None
    version = run(["version"], timeout=timeout)
    if version.returncode != 0:
        return f"the container engine ({settings.CONTAINER_CLI}) does not answer: {output_of(version)}"
    return (
        f"the container engine has no base image {settings.BASE_IMAGE}: build it with scripts/base_image.sh "
        "(or set RDEPLOY_BASE_IMAGE)"
    )


def installation_labels(role: str) -> list[str]:
    """``--label`` arguments marking a container as this installation's, in ``role``."""
    return ["--label", f"{LABEL_INSTALLATION}={settings.INSTALLATION_ID}", "--label", f"{LABEL_ROLE}={role}"]


def confinement_arguments(
    *, uid: int, scratch: str, scratch_options: str, memory_bytes: int, cpus: float, pids: int
) -> list[str]:
    """``run`` flags for a container that runs model code: no network, a read-only root
    whose only writable place is the ``scratch`` tmpfs, an unprivileged ``uid`` without
    capabilities or a way to gain any, and memory (no swap), CPU and process limits."""
    if settings.CONTAINER_CLI == "podman":
        # podman would add writable /tmp, /var/tmp and /run: the tmpfs stays the only one.
        engine_specific = ["--read-only-tmpfs=false"]
    else:
        # docker has no such flag, and podman's Docker API (Docker API 1.41, e.g. behind
        # DOCKER_HOST) adds those writable, exec-allowing tmpfs whatever the client: empty
        # read-only ones in their place keep them read-only there and on a Docker Engine
        # (where they were read-only parts of the root already).
        engine_specific = [
            argument
            for path in READ_ONLY_MASKS
            if path != scratch
            for argument in ("--tmpfs", f"{path}:ro,noexec,nosuid,nodev,size=4k")
        ]
    return [
        "--network",
        "none",
        "--read-only",
        *engine_specific,
        "--tmpfs",
        f"{scratch}:{scratch_options}",
        "--user",
        f"{uid}:{uid}",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--pids-limit",
        str(pids),
        "--memory",
        str(memory_bytes),
        "--memory-swap",
        str(memory_bytes),
        "--cpus",
        f"{cpus:g}",
    ]


def container_names(*, role: str | None = None, extra_label: str | None = None, status: str | None = None) -> list[str]:
    """Names of this installation's containers (in ``role`` if given; running or not,
    unless ``status`` names one: running, exited, ...)."""
    filters = ["--filter", f"label={LABEL_INSTALLATION}={settings.INSTALLATION_ID}"]
    if role:
        filters += ["--filter", f"label={LABEL_ROLE}={role}"]
    if extra_label:
        filters += ["--filter", f"label={extra_label}"]
    if status:
        filters += ["--filter", f"status={status}"]
    return check(["ps", "--all", "--format", "{{.Names}}", *filters]).split()


def remove(name: str, *, timeout: float = 60) -> None:
    """Remove container ``name`` (killing it if it runs); one that does not exist counts."""
    result = run(["rm", "--force", name], timeout=timeout)
    output = output_of(result)
    if result.returncode != 0 and "no such container" not in output.lower():
        raise EngineCommandFailed(f"removing container {name} failed: {output}")
