"""Isolation primitives for processes that run a user's model code.

Shared by the two modules that start such processes: ``rprocess`` (inspection, one
sandbox per run) and ``processes`` (local endpoint runtimes, one sandbox per runtime).
An ``.rds`` is code (CVE-2024-27322), so both use the same tools:

- a private mount namespace (``unshare --mount``) in which a root shell script hides
  RDEPLOY_DATA_DIR and the rdeploy installation behind empty tmpfs mounts and each
  ``*_FILE`` secret (and the SQLite file) behind /dev/null, then mounts back exactly
  the paths the process needs, read-only unless said otherwise;
- ``setpriv`` to an unprivileged uid with no capabilities and no new privileges: it
  cannot read another uid's ``/proc/<pid>/environ`` nor signal its processes;
- rlimits set between fork and exec, inherited by everything the process starts.

Each needs root; ``probe()`` says what this machine allows.
"""

from __future__ import annotations

import functools
import hashlib
import os
import resource
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

# Inspections: a fresh random uid per run from this range (rprocess).
INSPECTION_UID_BASE = 2_000_000
INSPECTION_UID_COUNT = 1_000_000
# Runtimes: one uid per runtime identifier, derived from it (``runtime_uid``), so a
# restart, ``find`` and ``stop`` know it without a lookup. No passwd entries.
RUNTIME_UID_BASE = 10_000_000
RUNTIME_UID_COUNT = 1_000_000_000


@dataclass(frozen=True)
class Probe:
    unshare: str | None
    # unshare --net works (as root); else whether an unprivileged user namespace does.
    net: bool
    user_net: bool
    # unshare --mount works and tmpfs can be mounted in it (as root).
    mounts: bool
    # setpriv's path when this process is root, so it can drop to another uid.
    setpriv: str | None


def works(command: Sequence[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.cache
def probe() -> Probe:
    unshare = shutil.which("unshare")
    net = bool(unshare) and works([unshare or "", "--net", "true"])
    user_net = not net and bool(unshare) and works([unshare or "", "--user", "--net", "true"])
    mounts = False
    if unshare:
        with tempfile.TemporaryDirectory() as directory:
            private = [unshare, "--mount", "--propagation", "private"]
            mounts = works([*private, "mount", "-t", "tmpfs", "rdeploy-probe", directory])
    setpriv = shutil.which("setpriv") if os.geteuid() == 0 else None
    return Probe(unshare=unshare, net=net, user_net=user_net, mounts=mounts, setpriv=setpriv)


def mount_namespace_prefix(*, net: bool) -> list[str]:
    """``unshare`` into a private mount namespace (and a network namespace if ``net``).
    It does not fork: the process keeps its pid."""
    found = probe()
    assert found.unshare
    assert found.mounts
    return [found.unshare, *(["--net"] if net else []), "--mount", "--propagation", "private"]


def setpriv_prefix(uid: int, *, die_with_parent: bool) -> list[str]:
    found = probe()
    assert found.setpriv
    return [
        found.setpriv,
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        *(["--pdeathsig=KILL"] if die_with_parent else []),
    ]


def runtime_uid(identifier: str) -> int:
    """The uid of the runtime ``identifier`` of this installation (its data directory
    too, so two installations or test sessions on one machine do not share uids)."""
    key = f"{settings.INSTALLATION_ID}\n{settings.DATA_DIR}\n{identifier}".encode()
    return RUNTIME_UID_BASE + int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % RUNTIME_UID_COUNT


def set_rlimits(*, memory_bytes: int, file_bytes: int, processes: int, cpu_seconds: int | None = None) -> None:
    """Runs in the child between fork and exec: the limits are inherited by everything it
    starts. RLIMIT_NPROC counts the processes (and threads) of the child's real uid, so it
    bounds one sandbox exactly when the sandbox has a uid of its own."""
    if cpu_seconds is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def hand_over(directory: Path, uid: int) -> None:
    """Gives ``directory`` and everything in it to ``uid``."""
    for root, dirs, files in os.walk(directory):
        for name in [root, *(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, uid, uid, follow_symlinks=False)


def _pids_of(uid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with suppress(OSError):
                # A zombie is dead (and init may be slow to reap it).
                if (
                    entry.stat().st_uid == uid
                    and Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
                ):
                    found.append(int(entry.name))
    return found


def running_as(uid: int) -> list[int]:
    """Pids of the processes running as ``uid`` (the owner of /proc/<pid> is the
    process's effective uid)."""
    return _pids_of(uid)


def kill_uid(uid: int) -> None:
    """SIGKILLs every process of ``uid``: also those that left their process group or
    rewrote their own environment."""
    if uid == 0:
        raise ValueError("refusing to kill every process of root")
    for _attempt in range(10):
        pids = _pids_of(uid)
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


@dataclass(frozen=True)
class Bind:
    """``source`` shown at ``target`` inside the namespace (read-only unless ``writable``)."""

    source: Path
    target: Path
    writable: bool = False


def hidden_paths() -> tuple[list[Path], list[Path]]:
    """The directories (RDEPLOY_DATA_DIR, the installation) and files (``*_FILE`` secrets,
    the SQLite database) a sandbox must not see."""
    hidden_dirs = sorted(
        directory
        for directory in {Path(settings.DATA_DIR).resolve(), Path(settings.BASE_DIR).resolve()}
        if directory.is_dir() and directory != Path("/")
    )
    secret_files = {Path(value).resolve() for name, value in os.environ.items() if name.endswith("_FILE") and value}
    database = settings.DATABASES["default"].get("NAME")
    if database and str(database).startswith("/"):
        secret_files.add(Path(str(database)).resolve())
    return hidden_dirs, sorted(path for path in secret_files if path.is_file())


def mount_script(
    *, binds: Sequence[Bind], keep_visible: Sequence[Path] = (), private_tmp: bool = False, hide_processes: bool = False
) -> str:
    """A bash script, run as root inside a fresh mount namespace before privileges are
    dropped and ending in ``exec "$@"``: hides what ``hidden_paths()`` names (except
    directories that contain one of ``keep_visible``), optionally gives the process a
    private /tmp and a /proc that shows only its own uid's processes, then mounts each
    bind. Each bind's source is opened before anything is hidden and mounted from that
    file descriptor, so a source inside a hidden directory can still be shown."""
    hidden_dirs, secret_files = hidden_paths()
    keep = [path.resolve() for path in keep_visible]
    hidden_dirs = [d for d in hidden_dirs if not any(inside(path, d) for path in keep)]
    # Hiding a directory hides all below it, and nothing can be mounted on a path inside it
    # once it is hidden: the default data dir (./var) lies inside the installation.
    hidden_dirs = [d for d in hidden_dirs if not any(d != other and inside(d, other) for other in hidden_dirs)]
    hidden_files = [path for path in secret_files if not any(inside(path, d) for d in hidden_dirs)]
    ordered = sorted(binds, key=lambda bind: len(bind.target.parts))
    lines = ["set -e"]
    for number, bind in enumerate(ordered, start=10):
        lines.append(f"exec {number}<{shlex.quote(str(bind.source))}")
    for directory in hidden_dirs:
        lines.append(f"mount -t tmpfs -o size=16k,mode=0755 rdeploy-hidden {shlex.quote(str(directory))}")
    for path in hidden_files:
        lines.append(f"mount --bind /dev/null {shlex.quote(str(path))}")
    if private_tmp:
        lines.append("mount -t tmpfs -o size=64m,mode=1777 rdeploy-tmp /tmp")
    for number, bind in enumerate(ordered, start=10):
        target = shlex.quote(str(bind.target))
        lines += [f"mkdir -p {target}", f"mount --no-canonicalize --bind /proc/self/fd/{number} {target}"]
        if not bind.writable:
            lines.append(f"mount -o remount,bind,ro {target}")
        lines.append(f"exec {number}<&-")
    if hide_processes:
        lines.append("mount -t proc -o hidepid=invisible rdeploy-proc /proc")
    # The working directory still points into the hidden tree (its ".." leads there):
    # enter it again through the new mounts.
    lines.append('cd -- "$PWD" 2>/dev/null || cd /')
    lines.append('exec "$@"')
    return "\n".join(lines)


def bash() -> str:
    return shutil.which("bash") or "/bin/bash"
