"""A throwaway PostgreSQL cluster for a test session (testsupport/env.py starts it before Django loads)."""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
from pathlib import Path
from urllib.parse import quote

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresServer:
    """A throwaway PostgreSQL 15 cluster (Debian's `postgresql`) in ``workdir``, listening only
    on a Unix socket in ``workdir/socket`` (no TCP port to race for), trust authentication
    (nobody else can reach the socket's directory), durability off: its data dies with it.

    initdb and postgres refuse to run as root, so as root the cluster runs as the `postgres`
    system user the Debian package creates, and ``workdir`` (a directory of its own, outside
    the 0700 data directory) belongs to that user; root connects through the socket anyway.
    """

    USER = "rdeploy"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.socket_dir = workdir / "socket"
        self.logfile = workdir / "postgres.log"
        self.running = False

    def url(self, name: str = "postgres") -> str:
        """A DATABASE_URL for database ``name`` of this cluster."""
        return f"postgres://{self.USER}@{quote(str(self.socket_dir), safe='')}/{name}"

    @property
    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str | Path) -> None:
        done = subprocess.run([*self._as_owner, *map(str, command)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed: {done.stdout}{done.stderr}; see {self.logfile}")

    def start(self) -> None:
        if not (POSTGRES_BIN / "postgres").exists():
            raise RuntimeError("PostgreSQL 15 is not installed: run `make test`, which installs it")
        if not self.data.exists():
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                for path in (self.workdir, self.socket_dir):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            self._run(
                *(POSTGRES_BIN / "initdb", "-D", self.data, "-U", self.USER, "-A", "trust"),
                *("-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"),
            )
        options = " ".join(
            (
                f"-k {self.socket_dir} -c listen_addresses=''",
                # Gunicorn's threads, each worker, beat, race tests' threads and the test process.
                "-c max_connections=200 -c shared_buffers=32MB",
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            )
        )
        self._run(POSTGRES_BIN / "pg_ctl", "-D", self.data, "-l", self.logfile, "-o", options, "-w", "start")
        self.running = True

    def stop(self) -> None:
        """Fast shutdown: open transactions roll back, clients are disconnected."""
        if self.running:
            self._run(POSTGRES_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
            self.running = False

    def remove_when_gone(self, pid: int) -> None:
        """Stop the cluster and remove its directory once process ``pid`` has ended, however it
        ended: a SIGKILL or a `timeout` skips atexit, and the cluster would run on forever."""
        stop = [*self._as_owner, str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        script = (
            f"while kill -0 {pid} 2>/dev/null; do sleep 2; done; "
            f"{shlex.join(stop)} >/dev/null 2>&1; rm -rf {shlex.quote(str(self.workdir))}"
        )
        subprocess.Popen(
            ["sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
