"""A throwaway installation's environment and command lines, for the benchmarks and the
servers tests start (testsupport/services.py). No Django: benchmarks use it before they
set the environment."""

from __future__ import annotations

import secrets
import sys
from collections.abc import MutableMapping
from pathlib import Path


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
