"""Local runtime processes: the one module that starts, finds, checks and stops them.

A runtime is started *detached*: in a session of its own and re-parented to init, so it
outlives the Celery worker or web process that started it, and nobody has to reap it.
Every process of a runtime, including the R server that ``serve`` forks into a session
of its own and every child Rserve forks per connection, inherits the environment
variable ``RDEPLOY_PROCESS=<identifier>``; ``find`` and ``stop`` use that marker, so a
restart after a crash or a reboot never leaves an orphan holding a port.

A process is identified by (pid, start time in clock ticks since boot): a pid reused by
an unrelated process after a reboot does not look alive.

A runtime runs the user's model code, so ``start`` can sandbox it (``Sandbox``, with the
primitives of ``deployer.integrations.isolation`` that inspection uses too): its own
unprivileged uid derived from the identifier, a private mount namespace that shows
only the paths it needs, rlimits. ``find`` and ``stop`` also go by that uid, so a model
that rewrites its own environment cannot shed the marker. See docs/pipeline.md, "The
local runtime's isolation".
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deployer.integrations import isolation

MARKER = "RDEPLOY_PROCESS"
# A runtime runs the user's model code (an .rds is code: CVE-2024-27322), so it inherits
# none of the worker's secrets (Django key, database URL, cloud credentials): only these.
INHERITED_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class StartedProcess:
    pid: int
    start_ticks: int
    # The unprivileged uid it runs as (None: the caller's own).
    uid: int | None = None


@dataclass(frozen=True)
class Sandbox:
    """How ``start`` isolates a process that runs a user's model code.

    Inside a private mount namespace RDEPLOY_DATA_DIR, the installation and ``*_FILE``
    secrets are hidden, /tmp is private and /proc shows only the runtime's own processes;
    ``read_only`` and ``writable`` paths are shown again at their own paths. ``owned``
    paths (and ``writable`` ones, created if missing) are given to the runtime's uid first,
    so it can read them whatever their mode. No CPU limit: a runtime runs for months."""

    read_only: tuple[Path, ...] = ()
    writable: tuple[Path, ...] = ()
    owned: tuple[Path, ...] = ()
    memory_bytes: int = 4 * 1024**3
    # Past it a write fails (EFBIG) instead of killing the server (SIGXFSZ is ignored).
    file_bytes: int = 1024**3
    # Processes and threads of the runtime's uid: HAProxy, R, one Rserve child per
    # connection from HAProxy (workers + 4) and the threads of each.
    processes: int = 512

    def describe(self, uid: int | None) -> str:
        probe = isolation.probe()
        if uid is None:
            parts = ["RUNS AS THE WORKER'S USER (the worker is not root)"]
        else:
            parts = [f"runs as uid {uid} (no capabilities, no new privileges)"]
        if uid is not None and probe.mounts:
            parts.append(
                "private mount namespace: RDEPLOY_DATA_DIR, the installation and *_FILE secrets hidden, private /tmp, "
                "/proc shows only its own processes, its model directory read-only"
            )
        parts.append(
            f"rlimits: address space {self.memory_bytes // 1024**2} MiB, file size {self.file_bytes // 1024**2} MiB, "
            f"processes {self.processes}"
        )
        parts.append("network: loopback and beyond, not isolated (it must listen for the gateway)")
        return "rdeploy: sandbox: " + "; ".join(parts)


def _sandboxed(identifier: str, command: Sequence[str], sandbox: Sandbox) -> tuple[list[str], int | None]:
    """``command`` behind the sandbox's mount script and setpriv, and the uid it runs as."""
    probe = isolation.probe()
    if probe.setpriv is None:
        return list(command), None
    uid = isolation.runtime_uid(identifier)
    if others := isolation.running_as(uid):
        raise OSError(f"uid {uid} of the runtime {identifier} is already used by processes {others}")
    for path in sandbox.writable:
        path.mkdir(parents=True, exist_ok=True)
    for path in (*sandbox.owned, *sandbox.writable):
        isolation.hand_over(path, uid)
    prefix: list[str] = []
    if probe.mounts:
        binds = [isolation.Bind(path, path) for path in sandbox.read_only]
        binds += [isolation.Bind(path, path, writable=True) for path in sandbox.writable]
        script = isolation.mount_script(binds=binds, private_tmp=True, hide_processes=True)
        prefix = [*isolation.mount_namespace_prefix(net=False), isolation.bash(), "-c", script, "rdeploy-runtime"]
    # Detached on purpose: the runtime outlives the worker that started it.
    return [*prefix, *isolation.setpriv_prefix(uid, die_with_parent=False), *command], uid


def _limit(sandbox: Sandbox) -> None:
    """Runs in the child between fork and exec; inherited through every exec after it."""
    isolation.set_rlimits(memory_bytes=sandbox.memory_bytes, file_bytes=sandbox.file_bytes, processes=sandbox.processes)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def free_port() -> int:
    """A loopback port nobody listens on right now, below the kernel's ephemeral range so no
    outgoing connection takes it before the runtime binds it."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(100):
        port = random.randrange(10000, max(ephemeral_low, 10001))  # noqa: S311 (not a secret)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free loopback port below the ephemeral range")


def port_is_open(port: int, *, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def listener_uids(port: int) -> set[int]:
    """The uids owning the sockets that listen on TCP ``port`` (any address, IPv4 or IPv6)."""
    uids = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                uids.add(int(fields[7]))
    return uids


def listens_as(identifier: str, port: int) -> bool:
    """Whether what listens on ``port`` is the sandboxed runtime ``identifier`` and nobody
    else: a model can bind any free loopback port, including the one a later runtime was
    given, and must not receive that endpoint's traffic. True when runtimes are not
    sandboxed (they all share the worker's uid then)."""
    if isolation.probe().setpriv is None:
        return True
    return listener_uids(port) == {isolation.runtime_uid(identifier)}


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None if the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields


def start_ticks(pid: int) -> int | None:
    """The process's start time (field 22 of /proc/<pid>/stat), or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def parent_pid(pid: int) -> int | None:
    """The process's parent (field 4 of /proc/<pid>/stat), or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def is_running(pid: int, ticks: int) -> bool:
    return start_ticks(pid) == ticks


def start(
    *,
    identifier: str,
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    sandbox: Sandbox | None = None,
) -> StartedProcess:
    """Start ``command`` detached (in ``sandbox`` if given), appending its stdout and
    stderr to ``log_path``, which the runtime writes through the descriptor it inherits."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path = log_path.with_suffix(".pid")
    pid_path.unlink(missing_ok=True)
    inherited = {name: os.environ[name] for name in INHERITED_VARIABLES if name in os.environ}
    child_env = {**inherited, "HOME": str(cwd), "TMPDIR": str(cwd), **env, MARKER: identifier}
    uid = None
    if sandbox is not None:
        command, uid = _sandboxed(identifier, command, sandbox)
    with log_path.open("ab") as log:
        if sandbox is not None:
            log.write(f"{sandbox.describe(uid)}\n".encode())
            log.flush()
        # setsid --fork: the runtime leads a new session and its parent exits at once, so
        # the runtime is re-parented to init. It writes its own pid before exec'ing (as root,
        # outside the sandbox; unshare, the mount script and setpriv exec in place).
        launcher = subprocess.Popen(
            ["setsid", "--fork", "sh", "-c", 'echo $$ > "$0" && exec "$@"', str(pid_path), *command],
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            close_fds=True,
            preexec_fn=(lambda: _limit(sandbox)) if sandbox is not None else None,
        )
        launcher.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_path.read_text().strip())
            ticks = start_ticks(pid)
            if ticks is not None:
                return StartedProcess(pid=pid, start_ticks=ticks, uid=uid)
            # Started and already gone: report it as such; the caller reads the log.
            return StartedProcess(pid=pid, start_ticks=-1, uid=uid)
        time.sleep(0.01)
    raise OSError(f"the runtime process for {identifier} did not start")


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
    """Pids of every live process carrying the marker for ``identifier`` or running as its
    sandbox's uid."""
    needle = f"{MARKER}={identifier}".encode()
    found = {pid for pid, environ in _environments() if needle in environ}
    if isolation.probe().setpriv is not None:
        found.update(isolation.running_as(isolation.runtime_uid(identifier)))
    return sorted(pid for pid in found if start_ticks(pid) is not None)


def identifiers_under(variable: str, directory: str) -> set[str]:
    """Identifiers of the runtimes whose ``variable`` names a path inside ``directory`` (e.g.
    RDEPLOY_MODEL_DIR under one test session's data dir, so its clean-up never touches
    anyone else's runtimes)."""
    needle = f"{variable}={directory.rstrip('/')}/".encode()
    prefix = f"{MARKER}=".encode()
    return {
        line[len(prefix) :].decode()
        for _, environ in _environments()
        if any(entry.startswith(needle) for entry in environ)
        for line in environ
        if line.startswith(prefix)
    }


def stop(identifier: str, *, pid: int | None = None, grace: float = 5.0) -> None:
    """SIGTERM the runtime (its ``serve`` drains and stops its server), then SIGKILL
    whatever still carries the marker after ``grace`` seconds. Idempotent."""
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
    if isolation.probe().setpriv is not None:
        # Whatever the sandbox's uid still runs (forked between two scans above).
        isolation.kill_uid(isolation.runtime_uid(identifier))


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
