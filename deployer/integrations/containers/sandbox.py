"""One-shot locked-down containers for running untrusted R (model inspection).

Nothing of the host goes into the container but a tar stream on its stdin, and nothing
comes back but its stdout and stderr through the engine CLI's pipes, read with a byte cap,
and its exit state through ``inspect``: no host path is mounted, so there is no path the
model could replace with a link for rdeploy to follow. The container has no network, a
read-only root, a size-limited tmpfs as its only writable place, an unprivileged uid with
no capabilities, and memory, swap, CPU and process limits; a wall-clock timeout removes
it, and it is removed in every case.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import selectors
import subprocess
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from django.conf import settings

from deployer.integrations.containers import cli

logger = logging.getLogger(__name__)

SCRATCH = "/scratch"
# TMPDIR inside the scratch tmpfs: /tmp is read-only like the rest of the root.
SCRATCH_TEMP = f"{SCRATCH}/temp"
ROLE = "inspection"
# The result is one line of JSON; more than this on stdout is the model's doing.
STDOUT_LIMIT = 1024**2
STDERR_TAIL = 64 * 1024
# Past this much output in all the run is stopped: reading it would cost the worker CPU
# for nothing, since a result is never that large.
OUTPUT_LIMIT = 64 * 1024**2
# A fresh uid per run with no passwd entry: RLIMIT_NPROC (containers.conf) is counted per
# uid across the host, so runs never share it with each other or with host users.
UID_BASE = 1_000_000
UID_COUNT = 1_000_000
# The container's own backstop: it ends itself this long after the timeout even if the
# worker that supervises it died (SIGKILL, OOM) and cannot remove it.
BACKSTOP_GRACE_SECONDS = 10
_READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    wall_seconds: float
    scratch_bytes: int
    cpus: float = 1.0
    # Counts threads too (ranger starts one per core): ample for R, fatal to a fork bomb.
    pids: int = 128

    def describe(self) -> dict[str, Any]:
        return {
            "memory_bytes": self.memory_bytes,
            "swap": "none",
            "cpus": self.cpus,
            "pids": self.pids,
            "scratch_bytes": self.scratch_bytes,
            "wall_seconds": self.wall_seconds,
        }


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr_tail: str
    seconds: float
    timed_out: bool
    out_of_memory: bool
    # Stopped because it printed more than OUTPUT_LIMIT bytes.
    output_exceeded: bool


class SandboxUnavailable(Exception):
    """The engine did not run the container (no engine, no image): the message says why."""


def isolation(image: str, limits: Limits) -> dict[str, Any]:
    """What isolates a run, recorded with its result."""
    return {
        "engine": settings.CONTAINER_CLI,
        "image": image,
        "network": "none",
        "root_filesystem": "read-only",
        "writable": f"tmpfs {SCRATCH} ({limits.scratch_bytes} bytes, noexec)",
        "host_mounts": "none",
        "user": "a fresh unprivileged uid, no capabilities, no new privileges",
        "limits": limits.describe(),
    }


def run(
    *,
    image: str,
    files: Mapping[str, Path],
    command: Sequence[str],
    limits: Limits,
    environment: Mapping[str, str],
    name_hint: str,
) -> Result:
    """Runs ``command`` in a new container of ``image`` after unpacking ``files`` (paths
    under SCRATCH -> host files or directories) into its scratch tmpfs; the container is
    removed before this returns. SandboxUnavailable when the engine could not run it."""
    name = f"rdeploy-{ROLE}-{name_hint}-{secrets.token_hex(6)}"
    uid = UID_BASE + secrets.randbelow(UID_COUNT)
    try:
        arguments = [cli.engine_cli(), *_run_arguments(name, uid, image, command, limits, environment)]
    except cli.EngineUnavailable as exc:
        raise SandboxUnavailable(str(exc)) from exc
    process = subprocess.Popen(
        arguments,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli.engine_env(),
    )
    try:
        return _supervise(process, name, files, limits)
    except cli.EngineCommandFailed as exc:
        raise SandboxUnavailable(str(exc)) from exc
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        try:
            cli.remove(name)
        except cli.EngineCommandFailed:
            # Its own timeout still ends it, and its labels let a cleanup find it.
            logger.exception("could not remove inspection container %s", name)


def _supervise(process: subprocess.Popen[bytes], name: str, files: Mapping[str, Path], limits: Limits) -> Result:
    started = time.monotonic()
    writer = threading.Thread(target=_send_files, args=(process.stdin, files), daemon=True)
    writer.start()
    output = _Output(process)
    finished = output.read(deadline=started + limits.wall_seconds)
    timed_out = not finished and not output.exceeded
    if not finished:
        _kill(name)
        # The CLI ends with its container; the grace only guards against a stuck CLI.
        output.read(deadline=time.monotonic() + 10, until_exceeded=False)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    writer.join(timeout=5)
    seconds = time.monotonic() - started
    # The CLI exits 0 only for a container that ran and exited 0: nothing to look up then.
    state = {"ExitCode": 0} if process.returncode == 0 and finished else _state(name)
    if state is None or state.get("Status") == "created" or state.get("Error"):
        raise SandboxUnavailable(cli.engine_problem() or _engine_error(process.returncode, output.stderr_tail(), state))
    recorded = state.get("ExitCode")
    exit_code = recorded if isinstance(recorded, int) else int(process.returncode or 0)
    stopped_by_us = timed_out or output.exceeded
    return Result(
        exit_code=exit_code,
        stdout=output.stdout.decode("utf-8", "replace"),
        stderr_tail=output.stderr_tail(),
        seconds=seconds,
        timed_out=timed_out,
        # cgroup v1 hosts do not always report OOMKilled; nothing but the kernel
        # SIGKILLs a run rdeploy did not stop itself.
        out_of_memory=not stopped_by_us and (bool(state.get("OOMKilled")) or exit_code == 137),
        output_exceeded=output.exceeded,
    )


def remove_leftovers(*, wall_seconds: float, margin_seconds: int = 60) -> None:
    """Removes this installation's stopped inspection containers older than any run with a
    ``wall_seconds`` limit can be: what a worker that died mid-run left behind (the
    container ended itself at its backstop, but only the worker would have removed it)."""
    oldest = int(wall_seconds) + BACKSTOP_GRACE_SECONDS + margin_seconds
    cli.check(
        [
            "container",
            "prune",
            "--force",
            "--filter",
            f"label={cli.LABEL_INSTALLATION}={settings.INSTALLATION_ID}",
            "--filter",
            f"label={cli.LABEL_ROLE}={ROLE}",
            "--filter",
            f"until={oldest}s",
        ]
    )


def _run_arguments(
    name: str, uid: int, image: str, command: Sequence[str], limits: Limits, environment: Mapping[str, str]
) -> list[str]:
    backstop = int(limits.wall_seconds) + BACKSTOP_GRACE_SECONDS
    # Unpacks stdin into the tmpfs, then hands over to the command under a timeout that
    # runs as PID 1: when it ends, the kernel ends every process left in the container.
    entry = (
        f"set -e; mkdir {SCRATCH_TEMP}; tar -x -f - -C {SCRATCH} --no-same-owner; "
        f'exec timeout -s KILL {backstop} "$@" </dev/null'
    )
    variables = {"HOME": SCRATCH, "TMPDIR": SCRATCH_TEMP, "LANG": "C.UTF-8", **environment}
    return [
        "run",
        "--interactive",
        "--name",
        name,
        # An image missing here is an operator's problem, not something to fetch now.
        "--pull",
        "never",
        *cli.installation_labels(ROLE),
        *cli.confinement_arguments(
            uid=uid,
            scratch=SCRATCH,
            scratch_options=f"rw,size={limits.scratch_bytes},mode=1777,noexec,nosuid,nodev",
            memory_bytes=limits.memory_bytes,
            cpus=limits.cpus,
            pids=limits.pids,
        ),
        # Output reaches rdeploy through the attached pipes only, never a log on disk.
        "--log-driver",
        "none",
        *[argument for key, value in variables.items() for argument in ("--env", f"{key}={value}")],
        "--workdir",
        SCRATCH,
        "--entrypoint",
        "/bin/sh",
        image,
        "-c",
        entry,
        "rdeploy-sandbox",
        *command,
    ]


def _send_files(stdin: IO[bytes] | None, files: Mapping[str, Path]) -> None:
    """Streams ``files`` as a tar archive into the container's stdin, then closes it.
    Only regular files and directories, with plain modes: nothing the host's links or
    owners say travels."""
    assert stdin is not None
    try:
        with tarfile.open(fileobj=stdin, mode="w|", format=tarfile.PAX_FORMAT) as archive:
            for target, source in files.items():
                paths = [source, *sorted(source.rglob("*"))] if source.is_dir() else [source]
                for path in paths:
                    if path.is_symlink() or not (path.is_file() or path.is_dir()):
                        continue
                    member = Path(target) / path.relative_to(source)
                    info = tarfile.TarInfo(member.as_posix())
                    if path.is_dir():
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        archive.addfile(info)
                        continue
                    info.size, info.mode = path.stat().st_size, 0o644
                    with path.open("rb") as handle:
                        archive.addfile(info, handle)
    except (BrokenPipeError, ValueError, OSError):
        # The container is gone (killed, failed to start): its result says what happened.
        pass
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


class _Output:
    """The container's stdout (its first STDOUT_LIMIT bytes) and stderr (its last
    STDERR_TAIL bytes), read from the CLI's pipes."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.stdout = b""
        self.stderr = bytearray()
        self.total = 0
        self.exceeded = False
        self._process = process
        self._selector = selectors.DefaultSelector()
        for stream in (process.stdout, process.stderr):
            assert stream is not None
            self._selector.register(stream, selectors.EVENT_READ)

    def read(self, *, deadline: float, until_exceeded: bool = True) -> bool:
        """Reads until both pipes close (True), or the deadline passes, or (when
        ``until_exceeded``) the output passes OUTPUT_LIMIT (False)."""
        while self._selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (until_exceeded and self.exceeded):
                return False
            for key, _ in self._selector.select(timeout=remaining):
                stream = key.fileobj
                chunk = stream.read1(_READ_CHUNK)  # type: ignore[union-attr]
                if not chunk:
                    self._selector.unregister(stream)
                    continue
                self.total += len(chunk)
                self.exceeded = self.total > OUTPUT_LIMIT
                if stream is self._process.stdout:
                    self.stdout += chunk[: max(0, STDOUT_LIMIT - len(self.stdout))]
                else:
                    self.stderr += chunk
                    del self.stderr[:-STDERR_TAIL]
        self._selector.close()
        return True

    def stderr_tail(self) -> str:
        return self.stderr.decode("utf-8", "replace")


def _kill(name: str) -> None:
    # SIGKILL at once: R runs as PID 1 of its namespace and so ignores SIGTERM.
    cli.run(["kill", name], timeout=30)


def _state(name: str) -> dict[str, Any] | None:
    """The container's State from the engine, or None when it was never created."""
    result = cli.run(["inspect", "--type", "container", "--format", "{{json .State}}", name], timeout=30)
    if result.returncode != 0:
        return None
    return dict(json.loads(result.stdout))


def _engine_error(returncode: int | None, stderr: str, state: dict[str, Any] | None) -> str:
    detail = (state or {}).get("Error") or stderr.strip()[-500:] or f"exit status {returncode}"
    return f"the container engine ({settings.CONTAINER_CLI}) could not start the inspection container: {detail}"
