"""Detached trusted commands (the image build and push jobs): the one module that starts,
finds and stops them, reads their output, and inspects processes (/proc).

A command is started *detached*: in a session of its own and re-parented to init, so it
outlives the Celery worker that started it, and nobody has to reap it. Every process it
runs inherits the environment variable ``RDEPLOY_PROCESS=<identifier>``; ``find`` and
``stop`` use that marker, so a rerun after a crash or a reboot never leaves an orphan.

A process is identified by (pid, start time in clock ticks since boot): a pid reused by
an unrelated process after a reboot does not look alive.

Model code never runs here: it runs only in containers
(``deployer.integrations.containers``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

MARKER = "RDEPLOY_PROCESS"
# Commands inherit none of the worker's secrets (Django key, database URL, cloud
# credentials): only these, and what the caller passes.
INHERITED_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class StartedProcess:
    pid: int
    start_ticks: int


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    return stat.rsplit(")", 1)[1].split()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None if the process is gone or a zombie."""
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else fields


def start_ticks(pid: int) -> int | None:
    """The process's start time (field 22 of /proc/<pid>/stat), or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def is_running(pid: int, ticks: int) -> bool:
    return start_ticks(pid) == ticks


def command_name(pid: int) -> str:
    """The process's command name (/proc/<pid>/comm), or "" if it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(roots: Sequence[int]) -> dict[int, int]:
    """Every live process below ``roots`` (pid -> start ticks), whatever it carries: a
    build's RUN step runs in a container whose processes do not inherit the marker."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: dict[int, int] = {}
    queue = list(roots)
    while queue:
        for child in children.get(queue.pop(), []):
            ticks = start_ticks(child)
            if ticks is not None and child not in found:
                found[child] = ticks
                queue.append(child)
    return found


def start(
    *,
    identifier: str,
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
) -> StartedProcess:
    """Start ``command`` detached, appending its stdout and stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path = log_path.with_suffix(".pid")
    pid_path.unlink(missing_ok=True)
    inherited = {name: os.environ[name] for name in INHERITED_VARIABLES if name in os.environ}
    child_env = {**inherited, "HOME": str(cwd), "TMPDIR": str(cwd), **env, MARKER: identifier}
    with log_path.open("ab") as log:
        # setsid --fork: the command leads a new session and its parent exits at once, so
        # it is re-parented to init. It writes its own pid before exec'ing.
        launcher = subprocess.Popen(
            ["setsid", "--fork", "sh", "-c", 'echo $$ > "$0" && exec "$@"', str(pid_path), *command],
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )
        launcher.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_path.read_text().strip())
            ticks = start_ticks(pid)
            if ticks is not None:
                return StartedProcess(pid=pid, start_ticks=ticks)
            # Started and already gone: report it as such; the caller reads the log.
            return StartedProcess(pid=pid, start_ticks=-1)
        time.sleep(0.01)
    raise OSError(f"the process for {identifier} did not start")


def _environments() -> list[tuple[int, list[bytes]]]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        found.append((int(entry.name), environ.split(b"\0")))
    return found


def find(identifier: str) -> list[int]:
    """Pids of every live process carrying the marker for ``identifier``."""
    needle = f"{MARKER}={identifier}".encode()
    return sorted(pid for pid, environ in _environments() if needle in environ and start_ticks(pid) is not None)


def stop(identifier: str, *, pid: int | None = None, grace: float = 5.0) -> None:
    """SIGTERM the command, then SIGKILL whatever still carries the marker after
    ``grace`` seconds. Idempotent."""
    first = [pid] if pid is not None and pid in find(identifier) else find(identifier)
    for target in first:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and find(identifier):
        time.sleep(0.05)
    for _ in range(20):
        remaining = find(identifier)
        if not remaining:
            break
        for target in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
        time.sleep(0.05)


def read_log(path: Path, offset: int, *, max_bytes: int = 256 * 1024) -> tuple[list[str], int]:
    """Complete lines appended to ``path`` after byte ``offset``, and the new offset."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size < offset:  # truncated or replaced: start again
                offset = 0
            handle.seek(offset)
            chunk = handle.read(max_bytes)
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    lines = chunk[: end + 1].decode("utf-8", "replace").splitlines()
    return lines, offset + end + 1


def tail(path: Path, *, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of ``path`` (empty if it does not exist)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return []
    return [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()][-lines:]
