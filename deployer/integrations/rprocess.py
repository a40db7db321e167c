"""The one module that starts R processes.

Uploaded `.rds` files are code (CVE-2024-27322: deserialization can run R code, and
Debian's R 4.2.2 has no fix), so R that touches a user's file runs here in a sandbox:
a scrubbed environment (no secrets, no cloud credentials), rlimits (CPU, address space,
file size, processes), a wall-clock timeout that kills the whole process group, a
scratch directory as HOME and TMPDIR, no network (a fresh network namespace) and, when
this process is root, an unprivileged user. `sandbox_isolation()` says which of these
this machine allows; each result carries that list so the caller can record it.

Package installs are the one exception: they run without the user's file, with network
(they download from RDEPLOY_CRAN_REPO), but with the same scrubbed environment.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from deployer.integrations import isolation as iso

# Each sandboxed run gets a fresh uid from this range, with no passwd entry: it owns only
# its scratch directory, so concurrent inspections cannot read each other's files, and
# RLIMIT_NPROC counts exactly that run's processes.
SANDBOX_UID_BASE = iso.INSPECTION_UID_BASE
SANDBOX_UID_COUNT = iso.INSPECTION_UID_COUNT
_OUTPUT_TAIL = 64 * 1024
# The only variables an R child sees (plus those a caller names explicitly).
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Limits:
    wall_seconds: float
    cpu_seconds: int
    memory_bytes: int
    file_bytes: int = 512 * 1024**2
    # Counts threads too (ranger, data.table): generous, but stops a fork bomb.
    processes: int = 256

    @classmethod
    def for_inspection(cls) -> Limits:
        timeout = settings.INSPECT_TIMEOUT_SECONDS
        return cls(wall_seconds=timeout, cpu_seconds=timeout, memory_bytes=settings.INSPECT_MEMORY_BYTES)

    def describe(self) -> str:
        return (
            f"rlimits: cpu {self.cpu_seconds} s, address space {self.memory_bytes // 1024**2} MiB, "
            f"file size {self.file_bytes // 1024**2} MiB, processes {self.processes}; "
            f"wall clock {self.wall_seconds:g} s"
        )


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    isolation: tuple[str, ...] = field(default=())

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    @property
    def out_of_memory(self) -> bool:
        """Killed by the kernel's OOM killer, or R hit the address-space limit."""
        if self.timed_out:
            return False
        return self.signal == signal.SIGKILL or "cannot allocate" in self.stderr

    @property
    def cpu_exceeded(self) -> bool:
        return self.signal in (signal.SIGXCPU, signal.SIGKILL) and "cannot allocate" not in self.stderr


class SandboxError(RuntimeError):
    """The sandbox cannot run as configured (an operator's problem, not the model's)."""


@dataclass(frozen=True)
class _Isolation:
    prefix: tuple[str, ...]
    description: tuple[str, ...]
    # setpriv's path when this process is root and drops privileges for every run.
    setpriv: str | None
    # Whether the prefix opens a private mount namespace in which paths can be hidden.
    mounts: bool = False


@functools.cache
def _isolation() -> _Isolation:
    prefix: list[str] = []
    described = ["environment scrubbed (only PATH, HOME, TMPDIR, LANG and R_LIBS)", "scratch directory as HOME/TMPDIR"]
    probe = iso.probe()
    unshare = probe.unshare
    mounts = False
    if unshare and probe.net:
        prefix += [unshare, "--net"]
        described.append("no network (unshare --net: a network namespace with only a down loopback)")
        mounts = probe.mounts
        if mounts:
            prefix = iso.mount_namespace_prefix(net=True)
            described.append(
                "a private mount namespace hides RDEPLOY_DATA_DIR, the rdeploy installation and *_FILE secrets "
                "behind empty filesystems; R libraries are mounted read-only"
            )
    elif unshare and probe.user_net:
        prefix += [unshare, "--user", "--net"]
        described.append("no network (unshare --user --net)")
    else:
        described.append("NETWORK NOT ISOLATED: unshare --net is not permitted here")
    setpriv = probe.setpriv
    if setpriv:
        described.append(
            "runs as a fresh unprivileged uid per run (no capabilities, no new privileges): reads only "
            "world-readable files, writes only its scratch directory and world-writable places such as /tmp"
        )
    elif os.geteuid() == 0:
        described.append("RUNS AS ROOT: setpriv is missing")
    else:
        described.append(f"runs as the worker's own user (uid {os.geteuid()})")
    return _Isolation(tuple(prefix), tuple(described), setpriv, mounts)


def sandbox_isolation() -> tuple[str, ...]:
    """What the sandbox isolates on this machine, in words."""
    return _isolation().description


def _scrubbed_env(home: Path, library_paths: Sequence[Path], extra: Mapping[str, str] | None) -> dict[str, str]:
    environ = {
        "PATH": _SAFE_PATH,
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # Empty user library: only the site libraries and the ones named here.
        "R_LIBS_USER": str(home / "no-user-library"),
    }
    if library_paths:
        environ["R_LIBS"] = os.pathsep.join(str(path) for path in library_paths)
    environ.update(extra or {})
    return environ


def _limit(limits: Limits) -> None:
    """Runs in the child between fork and exec: limits are inherited by everything R starts."""
    iso.set_rlimits(
        cpu_seconds=limits.cpu_seconds,
        memory_bytes=limits.memory_bytes,
        file_bytes=limits.file_bytes,
        processes=limits.processes,
    )


def _tail(path: Path) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - _OUTPUT_TAIL))
        return handle.read().decode("utf-8", "replace")


def _reachable_by_others(path: Path) -> bool:
    """Whether a uid with no groups can list `path` (every ancestor needs o+x)."""
    path = path.resolve()
    if not path.exists() or path.stat().st_mode & 0o005 != 0o005:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in path.parents)


@contextmanager
def scratch_directory() -> Iterator[Path]:
    """A private directory for one sandboxed run, removed afterwards whatever happens."""
    directory = Path(tempfile.mkdtemp(prefix="rdeploy-r-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _run(
    command: list[str],
    *,
    workdir: Path,
    environ: dict[str, str],
    limits: Limits,
    isolation: tuple[str, ...],
    uid: int | None,
) -> Result:
    (workdir / "tmp").mkdir(exist_ok=True)
    stdout_path, stderr_path = workdir / ".stdout", workdir / ".stderr"
    started = time.monotonic()
    timed_out = False
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        if uid is not None:
            # The scratch directory is the only place the run's uid may write to.
            iso.hand_over(workdir, uid)
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=lambda: _limit(limits),
            start_new_session=True,
        )
        try:
            process.wait(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # The whole session: R may have started children of its own.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if uid is not None:
                # Also what left the session (setsid).
                iso.kill_uid(uid)
    return Result(
        returncode=process.returncode,
        stdout=_tail(stdout_path),
        stderr=_tail(stderr_path),
        seconds=time.monotonic() - started,
        timed_out=timed_out,
        isolation=isolation,
    )


def run_sandboxed(
    script: Path,
    args: Sequence[str],
    *,
    workdir: Path,
    limits: Limits,
    library_paths: Sequence[Path] = (),
    extra_env: Mapping[str, str] | None = None,
) -> Result:
    """Runs `Rscript --vanilla script args...` in the sandbox, with `workdir` as its home."""
    isolation = _isolation()
    prefix = list(isolation.prefix)
    libraries = [Path(library) for library in library_paths]
    if isolation.mounts:
        mount_script, libraries = _hiding_script(workdir, libraries)
        prefix += [iso.bash(), "-c", mount_script, "rdeploy-sandbox"]
    uid = None
    if isolation.setpriv:
        if not isolation.mounts:
            for library in libraries:
                if not _reachable_by_others(library):
                    raise SandboxError(
                        f"the R library {library} is not readable by the sandbox's unprivileged user: make it and "
                        "every parent directory world-executable (RDEPLOY_R_LIBRARY_DIR)"
                    )
        uid = SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_COUNT)
        # R dies with the worker (SIGKILL, OOM) instead of running on unsupervised.
        prefix += iso.setpriv_prefix(uid, die_with_parent=True)
    command = [*prefix, settings.RSCRIPT, "--vanilla", str(script), *args]
    environ = _scrubbed_env(workdir, libraries, extra_env)
    return _run(
        command,
        workdir=workdir,
        environ=environ,
        limits=limits,
        isolation=(*isolation.description, limits.describe()),
        uid=uid,
    )


def _hiding_script(workdir: Path, libraries: list[Path]) -> tuple[str, list[Path]]:
    """The mount script (``isolation.mount_script``) that shows each R library read-only
    under the scratch directory and hides the installation; and the libraries' new paths."""
    workdir = workdir.resolve()
    binds = [iso.Bind(library, workdir / ".libraries" / str(index)) for index, library in enumerate(libraries)]
    for bind in binds:
        bind.target.mkdir(parents=True, exist_ok=True)
    return iso.mount_script(binds=binds, keep_visible=[workdir]), [bind.target for bind in binds]


def library_for(packages: Sequence[str], *, repo: str) -> Path:
    """The cached R library for a dependency set: the same packages from the same
    repository share one library (and the local target serves from it)."""
    key = "\n".join([repo, settings.RSCRIPT, *sorted(set(packages))])
    return Path(settings.R_LIBRARY_DIR) / hashlib.sha256(key.encode()).hexdigest()[:16]


def install_packages(packages: Sequence[str], *, repo: str, timeout: float = 600) -> tuple[Path, Result]:
    """Installs `packages` (and their dependencies) from `repo` into their cached library.

    Runs outside the sandbox, because it needs the network, and never sees a user's
    file: it gets package names only. Built in a temporary directory and renamed into
    place, so a half-finished install is never mistaken for a cached library."""
    library = library_for(packages, repo=repo)
    if (library / ".complete").exists():
        return library, Result(0, "", "", 0.0, False, ("cached library",))
    library.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{library.name}-", dir=library.parent))
    expression = (
        "args <- commandArgs(trailingOnly = TRUE); lib <- args[1]; repo <- args[2]; pkgs <- args[-(1:2)]; "
        "install.packages(pkgs, lib = lib, repos = repo, dependencies = c('Depends', 'Imports', 'LinkingTo'), "
        "quiet = TRUE); "
        "missing <- pkgs[!vapply(pkgs, function(p) nzchar(system.file(package = p, lib.loc = lib)), logical(1))]; "
        "if (length(missing)) { message('not installed: ', paste(missing, collapse = ', ')); quit(status = 3) }"
    )
    command = [settings.RSCRIPT, "--vanilla", "-e", expression, str(building), repo, *packages]
    environ = _scrubbed_env(building, (), None)
    limits = Limits(wall_seconds=timeout, cpu_seconds=int(timeout), memory_bytes=8 * 1024**3, processes=4096)
    try:
        result = _run(
            command,
            workdir=building,
            environ=environ,
            limits=limits,
            isolation=("package install: scrubbed environment, network allowed, no user file",),
            uid=None,
        )
        if result.returncode == 0 and not result.timed_out:
            for scratch in ("tmp", ".stdout", ".stderr", "no-user-library"):
                target = building / scratch
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            (building / ".complete").write_text("\n".join(sorted(set(packages))) + "\n")
            # Read-only for the sandbox user, which serves and inspects from it.
            os.chmod(building, 0o755)  # noqa: S103
            try:
                building.rename(library)
            except OSError:
                # Another worker finished the same dependency set first: use theirs.
                shutil.rmtree(building, ignore_errors=True)
            building = library
        return library, result
    finally:
        if building != library:
            shutil.rmtree(building, ignore_errors=True)
