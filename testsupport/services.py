"""Real service processes for tests: Redis, a Celery worker and the web app, started and stopped here."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

from django.conf import settings

from config.settings import BASE_DIR
from testsupport.installation import celery_worker_command, gunicorn_command, redis_serves
from testsupport.ports import PORT_ATTEMPTS, free_port, listening


class RedisServer:
    """A throwaway redis-server without persistence, on ``port``; with None, on a free port
    it picks (another one if that was taken before redis bound it), kept across restarts."""

    def __init__(self, port: int | None, workdir: Path) -> None:
        self.port = port or 0
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make test`, which installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        pick = not self.port
        for _ in range(PORT_ATTEMPTS if pick else 1):
            if pick:
                self.port = free_port()
            if self._started(binary):
                return
        raise RuntimeError(f"redis-server did not start on port {self.port}; is the port taken?")

    def _started(self, binary: str) -> bool:
        """Start on self.port; False when redis exited (the port was taken, say)."""
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            if redis_serves(self.process, self.port):
                return True
        except RuntimeError:
            self.stop()
            raise
        self.process = None
        return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


def session_database_url() -> str:
    """DATABASE_URL of the database this test session uses now, for child processes (a
    worker, gunicorn): after django_db_setup it names pytest-django's test database."""
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{database['NAME']}"
    credentials = quote(database["USER"], safe="")
    if database["PASSWORD"]:
        credentials += ":" + quote(database["PASSWORD"], safe="")
    port = f":{database['PORT']}" if database["PORT"] else ""
    return f"postgres://{credentials}@{quote(database['HOST'], safe='')}{port}/{quote(database['NAME'], safe='')}"


class CeleryWorker:
    """A real `celery -A tasks worker` process sharing the test database and Redis.

    Solo pool: one process, so SIGKILL in a fault test kills exactly the task runner.
    """

    def __init__(self, database_url: str, logfile: Path, *, beat: bool = False) -> None:
        self.database_url = database_url
        self.logfile = logfile
        self.beat = beat
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, DATABASE_URL=self.database_url, PYTHONUNBUFFERED="1")
        command = celery_worker_command(
            *("-P", "solo", "-c", "1", "-Q", "rdeploy", "-l", "INFO", "--without-mingle", "--without-gossip"),
            *("-n", f"test-worker-{os.getpid()}@%h"),
        )
        if self.beat:
            command += ["-B", "-s", str(self.logfile.with_suffix(".beat"))]
        log = self.logfile.open("ab")
        self.process = subprocess.Popen(
            command, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        from tasks import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"Celery worker exited; see {self.logfile}")
            if app.control.ping(timeout=0.5):
                return
        raise RuntimeError(f"Celery worker did not answer within {timeout} s; see {self.logfile}")

    def kill(self) -> None:
        """SIGKILL, as an OOM killer or a lost node would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        stop_process_group(self.process)
        self.process = None


class WebServer:
    """The real web app: gunicorn serving `config.wsgi` as `make run` does (gthread
    workers), on the test database, so requests go through the same WSGI entry point as
    in production (including the prediction fast path)."""

    def __init__(
        self,
        database_url: str,
        logfile: Path,
        *,
        workers: int = 2,
        threads: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.logfile = logfile
        self.workers, self.threads, self.env = workers, threads, env or {}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        env = dict(os.environ, DATABASE_URL=self.database_url, PYTHONUNBUFFERED="1", **self.env)
        # Port 0: gunicorn binds a free port itself (none can take it first) and logs which.
        command = gunicorn_command("config.wsgi", 0, workers=self.workers, threads=self.threads)
        self.port = 0
        log = self.logfile.open("ab")
        logged = log.tell()
        self.process = subprocess.Popen(
            command, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.logfile}")
            self.port = self.port or _gunicorn_port(self.logfile, logged)
            if self.port and listening(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not listen within {timeout} s; see {self.logfile}")

    def stop(self) -> None:
        stop_process_group(self.process)
        self.process = None


def _gunicorn_port(logfile: Path, offset: int) -> int:
    """The port of gunicorn's "Listening at: http://127.0.0.1:<port>" logged after ``offset``; 0 before."""
    with logfile.open("rb") as log:
        log.seek(offset)
        found = re.search(rb"Listening at: http://127\.0\.0\.1:(\d+)", log.read())
    return int(found[1]) if found else 0


def stop_process_group(process: subprocess.Popen[bytes] | None, grace: float = 20) -> None:
    """SIGTERM to the process's group (started with start_new_session), SIGKILL after grace."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class PodmanDockerApi:
    """podman's Docker-compatible API (Docker API 1.41) on a Unix socket of its own, so the
    `docker` CLI can drive the same storage and images as the tests' podman: `docker` with
    ``DOCKER_HOST=self.docker_host`` runs real containers without a Docker Engine."""

    def __init__(self, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.socket = workdir / "podman.sock"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 30) -> None:
        binary = shutil.which("podman")
        if binary is None:
            raise RuntimeError("podman is not installed: run `make test`, which installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        # The configuration every podman of rdeploy's uses (runc, cgroupfs, ulimits).
        env = dict(os.environ, CONTAINERS_CONF=str(BASE_DIR / "config" / "containers.conf"), **self.env)
        log = (self.workdir / "service.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "system", "service", "--time=0", self.docker_host],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"podman system service exited; see {self.workdir / 'service.log'}")
            if self.answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"podman system service did not answer within {timeout} s; see {self.workdir}")

    def answers(self) -> bool:
        """True when the API answers GET /_ping with OK."""
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(2)
            try:
                client.connect(str(self.socket))
                client.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
                reply = client.recv(4096)
            except OSError:
                return False
        return reply.startswith(b"HTTP/1.") and reply.rstrip().endswith(b"OK")

    def stop(self) -> None:
        stop_process_group(self.process)
        self.process = None
        self.socket.unlink(missing_ok=True)


class OciRegistry:
    """A throwaway OCI registry (Debian's docker-registry), plain HTTP on a free port, its
    storage under ``workdir``. Named ``localhost:<port>``: podman's Docker API checks TLS on
    every login but one to localhost; ``registries_conf`` marks it insecure for pushes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    @property
    def registries_conf(self) -> Path:
        return self.workdir / "registries.conf"

    def start(self, timeout: float = 20) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The registry cannot bind port 0 and say which it got: a free port, another if taken.
        for _ in range(PORT_ATTEMPTS):
            if self._started(free_port(), timeout):
                return
        raise RuntimeError(f"docker-registry found no free port; see {self.workdir / 'registry.log'}")

    def _started(self, port: int, timeout: float) -> bool:
        """Serve on ``port``; False when the registry exited (the port was taken, say)."""
        self.port = port
        config = self.workdir / "config.yml"
        config.write_text(
            f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {self.workdir / 'storage'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
        )
        self.registries_conf.write_text(f'[[registry]]\nlocation = "{self.address}"\ninsecure = true\n')
        log = (self.workdir / "registry.log").open("ab")
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if self.tags("v2-probe") is not None:
                return True
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"docker-registry did not answer; see {self.workdir / 'registry.log'}")
            time.sleep(0.1)
        self.process = None
        return False

    def tags(self, repository: str) -> list[str] | None:
        """The repository's tags ([] for an unknown one), None when the registry does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/{repository}/tags/list", timeout=5) as got:
                return list(json.load(got).get("tags") or [])
        except urllib.error.HTTPError as error:
            return [] if error.code == 404 else None
        except OSError:
            return None

    def stop(self) -> None:
        stop_process_group(self.process)
        self.process = None
