"""Serving containers of local endpoints: start, find, inspect, stop and read their logs.

One container per rollout, named and labelled from the endpoint and deployment, so a
retry, the reconciler and teardown find it without a pid (and it outlives the worker
that started it: containers are detached). It runs ``serve`` as SageMaker runs it, the
model at /opt/ml/model (read-only), with no network at all: no outbound connections, no
host loopback services, no other endpoint, no metadata service. The gateway reaches it
through a Unix socket in a per-start host directory mounted at /run/rdeploy.

That directory is the container's to write until ``lock_socket`` takes it back (root's,
0755) and checks that the socket is a socket and the only entry; only then may anyone
connect to it.
Output is read through the engine (its ``logs`` command), never from a file the
container can write.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from deployer.integrations.containers import cli

ROLE = "runtime"
LABEL_ENDPOINT = "rdeploy.endpoint"
LABEL_DEPLOYMENT = "rdeploy.deployment"
SOCKET_MOUNT = "/run/rdeploy"
SOCKET_NAME = "runtime.sock"
MODEL_MOUNT = "/opt/ml/model"
# HAProxy, R, one Rserve child per connection from HAProxy and the threads of each.
PIDS_LIMIT = 512
# The engine keeps at most this much of a container's output; the rest is rotated away.
LOG_MAX_SIZE = "16m"
# The container's only writable place besides its socket: a tmpfs of its own.
SCRATCH = "/tmp"  # noqa: S108 (inside the container, private to it)
# Unprivileged uids for runtimes, one per rollout (deployment), far above any host account
# and above inspection's (sandbox.UID_BASE, 1 000 000 to 1 999 999); the last stays below
# 2**31, where some tools take a uid for a negative number.
UID_BASE = 2_000_000
UID_SPAN = 2_000_000_000


# The engine's timestamp at the start of each line of ``logs --timestamps`` (podman
# prints 9 decimals, Docker drops trailing zeros), and the space after it.
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?Z) ")


class UntrustedSocket(Exception):
    """The socket directory holds something other than the runtime's own socket."""


class ForeignContainer(Exception):
    """A container of the name exists and is not this installation's: rdeploy leaves it be."""


@dataclass(frozen=True)
class ContainerState:
    running: bool
    exit_code: int
    # True when the memory limit ended it.
    oom_killed: bool


def runtime_uid(deployment: int) -> int:
    """The uid the processes of ``deployment``'s container run as: its own, so none shares
    one (nor RLIMIT_NPROC, counted per uid) with another rollout's processes or a host
    account. Deployment ids are unique in an installation; installations sharing an engine
    start at offsets drawn from their ids, far apart unless unlucky (docs/containers.md)."""
    offset = int.from_bytes(hashlib.sha256(settings.INSTALLATION_ID.encode()).digest()[:8], "big")
    return UID_BASE + (offset + deployment) % UID_SPAN


def start(
    *,
    name: str,
    image: str,
    command: list[str],
    endpoint: str,
    deployment: int,
    model_dir: Path,
    socket_dir: Path,
    env: dict[str, str],
    memory_mb: int,
    cpus: float,
    read_only_mounts: dict[Path, str] | None = None,
) -> None:
    """Start container ``name`` (replacing a leftover of this installation's of that name)
    running ``command``; ``socket_dir`` is created afresh for it, writable by its uid until
    ``lock_socket``. ForeignContainer if another installation's container has the name."""
    _remove_ours(name)
    uid = runtime_uid(deployment)
    shutil.rmtree(socket_dir, ignore_errors=True)
    socket_dir.mkdir(mode=0o700, parents=True)
    os.chown(socket_dir, uid, uid)
    variables = {
        **env,
        "RDEPLOY_LISTEN_SOCKET": f"{SOCKET_MOUNT}/{SOCKET_NAME}",
        "HOME": SCRATCH,
        "TMPDIR": SCRATCH,
    }
    # Nothing the model brings or writes runs as a program (podman: Docker's --volume has
    # no such options), so native code comes only from the image.
    confined = ",noexec,nosuid,nodev" if settings.CONTAINER_CLI == "podman" else ""
    mounts = {model_dir: f"{MODEL_MOUNT}:ro{confined}", socket_dir: f"{SOCKET_MOUNT}:rw{confined}"}
    mounts.update({path: f"{target}:ro{confined}" for path, target in (read_only_mounts or {}).items()})
    cli.check(
        [
            "run",
            "--detach",
            "--name",
            name,
            # The rollout built or found its image: nothing is fetched from a registry now.
            "--pull",
            "never",
            *cli.installation_labels(ROLE),
            "--label",
            f"{LABEL_ENDPOINT}={endpoint}",
            "--label",
            f"{LABEL_DEPLOYMENT}={deployment}",
            *cli.confinement_arguments(
                uid=uid,
                scratch=SCRATCH,
                scratch_options="rw,noexec,nosuid,nodev,size=256m",
                memory_bytes=memory_mb * 1024**2,
                cpus=cpus,
                pids=PIDS_LIMIT,
            ),
            "--log-opt",
            f"max-size={LOG_MAX_SIZE}",
            *(argument for path, target in mounts.items() for argument in ("--volume", f"{path}:{target}")),
            *(argument for key, value in sorted(variables.items()) for argument in ("--env", f"{key}={value}")),
            image,
            *command,
        ]
    )


def state(name: str) -> ContainerState | None:
    """The container's state, or None if there is no such container."""
    state_format = "{{.State.Running}} {{.State.ExitCode}} {{.State.OOMKilled}}"
    result = cli.run(["inspect", "--type", "container", "--format", state_format, name])
    if result.returncode != 0:
        if "no such" in cli.output_of(result).lower():
            return None
        raise cli.EngineCommandFailed(f"inspecting container {name} failed: {cli.output_of(result)}")
    running, exit_code, oom_killed = result.stdout.decode().split()
    return ContainerState(running=running == "true", exit_code=int(exit_code), oom_killed=oom_killed == "true")


def stop(name: str, *, grace: int = 5) -> None:
    """SIGTERM (``serve`` drains), SIGKILL after ``grace`` seconds, then remove the
    container: with it go every process it ran. Idempotent; another installation's
    container of that name is left alone."""
    if _installation_of(name) != settings.INSTALLATION_ID:
        return
    cli.run(["stop", "--time", str(grace), name], timeout=grace + 30)
    cli.remove(name)


def _installation_of(name: str) -> str | None:
    """The installation label of container ``name`` ("" if none), None if there is no such
    container."""
    label_format = f'{{{{index .Config.Labels "{cli.LABEL_INSTALLATION}"}}}}'
    result = cli.run(["inspect", "--type", "container", "--format", label_format, name])
    if result.returncode != 0:
        if "no such" in cli.output_of(result).lower():
            return None
        raise cli.EngineCommandFailed(f"inspecting container {name} failed: {cli.output_of(result)}")
    return result.stdout.decode().strip()


def _remove_ours(name: str) -> None:
    """Remove container ``name`` if there is one and it is this installation's;
    ForeignContainer if it is not. (Another installation could take the name between the
    check and the removal: names carry the installation id, so only a misconfigured one.)"""
    installation = _installation_of(name)
    if installation is None:
        return
    if installation != settings.INSTALLATION_ID:
        raise ForeignContainer(f"container {name} exists and is not this rdeploy installation's")
    cli.remove(name)


def names(*, endpoint: str | None = None) -> list[str]:
    """This installation's runtime containers (of ``endpoint`` if given), running or not."""
    return cli.container_names(role=ROLE, extra_label=f"{LABEL_ENDPOINT}={endpoint}" if endpoint else None)


def lock_socket(socket_dir: Path, *, group: int) -> Path:
    """Take ``socket_dir`` back from the container and return its socket's path, once
    connecting through that path can only reach the container's own listener.

    The directory becomes root's (0755), so the container's uid can no longer add,
    rename or remove entries in it; then the entry is checked through the held
    descriptor, without following links: a symlink the model planted (to the engine's
    socket, say) is refused, and so is any other entry (a file there would stay the
    container's to grow on the host's disk). FileNotFoundError: no socket yet."""
    descriptor = os.open(socket_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        # Not before the runtime made its socket: it could not make it afterwards.
        os.stat(SOCKET_NAME, dir_fd=descriptor, follow_symlinks=False)
        os.fchown(descriptor, os.getuid(), os.getgid())
        os.fchmod(descriptor, 0o755)
        entry = os.stat(SOCKET_NAME, dir_fd=descriptor, follow_symlinks=False)
        if not stat.S_ISSOCK(entry.st_mode):
            raise UntrustedSocket(f"{socket_dir / SOCKET_NAME} is not a socket (mode {stat.filemode(entry.st_mode)})")
        if others := sorted(set(os.listdir(descriptor)) - {SOCKET_NAME}):
            raise UntrustedSocket(f"{socket_dir} holds more than the socket: {', '.join(others)[:200]}")
        # The listener keeps working whoever owns the inode; connecting needs write access,
        # which the gateway (web processes of ``group``) gets. Checked and no longer the
        # container's to replace, the entry can be followed now.
        os.chown(SOCKET_NAME, os.getuid(), group, dir_fd=descriptor, follow_symlinks=False)
        os.chmod(SOCKET_NAME, 0o660, dir_fd=descriptor)
    finally:
        os.close(descriptor)
    return socket_dir / SOCKET_NAME


def read_logs(name: str, cursor: str | None, *, timeout: float = 30) -> tuple[list[str], str | None]:
    """Output lines (stdout and stderr, in time order) after ``cursor``, and the cursor to
    pass next time (``cursor`` itself when nothing is new). The cursor is the engine's
    timestamp of the last line read and how many lines of each stream carry it: lines
    stamped at that instant are asked for again and those already read skipped, so none is
    lost. Counted per stream, since a stream's lines keep their order but the two streams'
    lines of one instant do not (podman's Docker API stamps whole seconds: many lines share one).

    The text after each timestamp is the model's: only "\\n" ends a line (the engine's own
    separator), and a line without the engine's timestamp continues the one before it, so
    nothing the model prints can pose as a timestamp or move the cursor."""
    since, already_read = _parse_cursor(cursor)
    arguments = ["logs", "--timestamps"]
    if since is not None:
        arguments += ["--since", _format_nanoseconds(since - 1)]
    result = cli.run([*arguments, name], timeout=timeout)
    if result.returncode != 0:
        return [], cursor
    entries = [
        (at, (stream, index), line)
        for stream, output in enumerate((result.stdout, result.stderr))
        for index, (at, line) in enumerate(_stamped_lines(output.decode("utf-8", "replace")))
        if since is None or at >= since
    ]
    if not entries:
        return [], cursor
    entries.sort()
    lines = []
    for at, (stream, _), line in entries:
        if at == since:
            # A cursor of one count (stored before counts were per stream) skips in time order.
            skipped = stream if len(already_read) == 2 else 0
            if already_read[skipped] > 0:
                already_read[skipped] -= 1
                continue
        lines.append(line)
    # A stamp from the future (a clock set back) would hide every line until then.
    last = min(entries[-1][0], time.time_ns())
    counts = [sum(1 for at, (of, _), _ in entries if at == last and of == stream) for stream in (0, 1)]
    return lines, f"{last}:{counts[0]}:{counts[1]}"


def _stamped_lines(output: str) -> list[tuple[int, str]]:
    """(nanoseconds, text) of each line of ``logs --timestamps`` output."""
    stamped: list[tuple[int, str]] = []
    for raw in output.split("\n"):
        match = _STAMP.match(raw)
        at = _parse_timestamp(match.group(1)) if match else None
        if match and at is not None:
            stamped.append((at, raw[match.end() :]))
        elif stamped and raw:
            # Not the engine's line start: the previous line's text goes on (the engine's
            # own warnings on stderr, before any line, are not the container's output).
            previous_at, previous = stamped[-1]
            stamped[-1] = (previous_at, f"{previous}\n{raw}")
    return stamped


def _parse_cursor(cursor: str | None) -> tuple[int | None, list[int]]:
    """The cursor's instant and the lines read at it: per stream (stdout, stderr), or one
    count in time order for a cursor of the older form ``<at>:<count>``."""
    if not cursor:
        return None, [0, 0]
    at, *counts = cursor.split(":")
    # Cursors stored before lines were parsed strictly may lie in the future.
    if int(at) > time.time_ns():
        return time.time_ns(), [0, 0]
    return int(at), [int(count) for count in counts]


def _parse_timestamp(stamp: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 UTC timestamp with up to 9 decimals (as
    _STAMP matched it), or None if it names no real instant (month 13)."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    try:
        whole = datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(whole.timestamp()) * 10**9 + int((fraction or "0").ljust(9, "0"))


def _format_nanoseconds(nanoseconds: int) -> str:
    seconds, fraction = divmod(nanoseconds, 10**9)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"
