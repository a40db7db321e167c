"""A throwaway installation's environment and command lines, for the benchmarks and the
servers tests start (testsupport/services.py), and the installation a benchmark runs
(BenchmarkInstallation). No Django at import: benchmarks use it before they set the
environment."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from testsupport.ports import PORT_ATTEMPTS, free_port, listening
from testsupport.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def installation_env(
    environ: MutableMapping[str, str],
    data_dir: Path,
    *,
    allowed_hosts: str,
    redis_port: int | None = None,
    **extra: str,
) -> MutableMapping[str, str]:
    """``environ`` set for an installation of its own in ``data_dir`` (its SQLite database
    there, so any DATABASE_URL goes), with production's switches and a fresh secret."""
    environ.update(
        RDEPLOY_DATA_DIR=str(data_dir),
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="0",
        DJANGO_HTTPS="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS=allowed_hosts,
        **extra,
    )
    if redis_port is not None:
        environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    environ.pop("DATABASE_URL", None)
    return environ


def gunicorn_command(app: str, port: int, *, workers: int, threads: int | None = None) -> list[str]:
    """gunicorn serving ``app`` on 127.0.0.1:``port``; with ``threads``, gthread workers as
    `make run` serves (scripts/run.sh)."""
    command = [str(Path(sys.executable).parent / "gunicorn"), app, "-b", f"127.0.0.1:{port}", "-w", str(workers)]
    if threads is not None:
        command += ["-k", "gthread", "--threads", str(threads)]
    return command


def celery_worker_command(*options: str) -> list[str]:
    """A Celery worker of rdeploy's tasks in this interpreter, with ``options`` after `worker`."""
    return [sys.executable, "-m", "celery", "-A", "tasks", "worker", *options]


class BenchmarkInstallation:
    """A throwaway installation for a benchmark, as `make run` starts one (scripts/run.sh):
    a temporary data directory, a Redis of its own, this process's environment set for it
    (Django here and every child read it), and the children it spawns, each logged under
    ``logs/``. On exit: children stopped (newest first), ``cleanup`` run (containers
    outlive the processes that started them), the directory removed unless ``keep``.

    Nothing is bound on a port picked beforehand: gunicorn binds port 0 and logs which it
    got; redis-server cannot, so it starts again on another free port when it could not
    bind the one picked (PORT_ATTEMPTS).
    """

    def __init__(
        self,
        name: str,
        *,
        keep: bool = False,
        cleanup: Callable[[], None] | None = None,
        allowed_hosts: str = "127.0.0.1",
        **extra: str,
    ) -> None:
        self.name, self.keep, self.cleanup, self.extra = name, keep, cleanup, extra
        self.allowed_hosts = allowed_hosts
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"rdeploy-{name}-bench-"))
        self.logs = self.data_dir / "logs"
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> BenchmarkInstallation:
        self.logs.mkdir()
        try:
            redis_port = self._start_redis()
        except BaseException:
            self._stop()
            raise
        installation_env(
            os.environ,
            self.data_dir,
            allowed_hosts=self.allowed_hosts,
            redis_port=redis_port,
            # Its own containers' names and labels: none shared with another installation here.
            RDEPLOY_INSTALLATION_ID=f"{self.name}{secrets.token_hex(4)}",
            PYTHONUNBUFFERED="1",
            **self.extra,
        )
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop()

    def spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        """Start ``command`` in the repository, its output in ``logs/<name>.log``."""
        with (self.logs / f"{name}.log").open("ab") as log:
            self.children[name] = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        return self.children[name]

    def serve(
        self, name: str, app: str, *, workers: int, threads: int | None = None, options: tuple[str, ...] = ()
    ) -> int:
        """gunicorn serving ``app`` on a port it binds itself (with ``threads``, gthread
        workers, as `make run`; else sync ones); that port, once it accepts connections."""
        log = self.logs / f"{name}.log"
        process = self.spawn(name, [*gunicorn_command(app, 0, workers=workers, threads=threads), *options])

        def bound() -> int:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn {name} exited; see {log}")
            found = re.search(rb"Listening at: http://127\.0\.0\.1:(\d+)", log.read_bytes())
            return int(found[1]) if found and listening(int(found[1])) else 0

        return int(wait_for(bound, timeout=60, interval=0.1, what=f"gunicorn {name} to listen"))

    def api_token(self, username: str) -> str:
        """Django set up on the installation's database (migrated), and a REST token of
        ``username`` (created when missing)."""
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command

        from deployer.services.tokens import api_token_create

        call_command("migrate", verbosity=0)
        user = User.objects.filter(username=username).first() or User.objects.create_user(username)
        return api_token_create(user=user).secret

    def train_example(self) -> Path:
        """The example model (examples/iris/train.R): the directory with iris-rf.rds and sample.csv."""
        model_dir = self.data_dir / "example"
        subprocess.run(["Rscript", "--vanilla", str(ROOT / "examples/iris/train.R"), str(model_dir)], check=True)
        return model_dir

    def _start_redis(self) -> int:
        for _ in range(PORT_ATTEMPTS):
            port = free_port()
            process = self.spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""])
            if redis_serves(process, port):
                return port
        raise RuntimeError(f"redis-server found no free port; see {self.logs / 'redis.log'}")

    def _stop(self) -> None:
        for child in reversed(self.children.values()):
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        if self.cleanup is not None:
            self.cleanup()
        if self.keep:
            print(f"data kept in {self.data_dir}")
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def redis_serves(process: subprocess.Popen[bytes], port: int, timeout: float = 10) -> bool:
    """Whether ``process`` serves ``port``; False when it exited (the port was taken)."""
    # One try per round (redis-py retries thrice by default): whoever holds the port may
    # accept and never answer, and ours may have exited meanwhile.
    client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        try:
            # Ours, not whoever may hold the port: then ours exits, unable to bind.
            if client.info("server")["process_id"] == process.pid:
                return True
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer on port {port} within {timeout} s")
        time.sleep(0.05)
    return False
