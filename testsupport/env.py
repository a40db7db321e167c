"""Pytest plugin (`-p testsupport.env`) that sets the environment before Django loads.

It must run before pytest-django reads the settings, which a conftest.py cannot do:
every test session gets its own data directory, its own database, its own Redis port and a
real secret. Child processes started by tests (Celery workers, R, gunicorn) inherit it.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from testsupport.ports import free_port
from testsupport.postgres import PostgresServer

_data_dir = tempfile.mkdtemp(prefix="rdeploy-test-")
os.environ["RDEPLOY_DATA_DIR"] = _data_dir


def _start_postgres() -> PostgresServer:
    """This session's own PostgreSQL cluster, stopped and removed when the session's process exits."""
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="rdeploy-test-pg-")))
    starter = os.getpid()

    def stop() -> None:
        if os.getpid() == starter:  # not in a forked child that inherited this handler
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)

    atexit.register(stop)
    server.remove_when_gone(starter)
    server.start()
    return server


# The database (docs/testing.md): PostgreSQL unless RDEPLOY_TEST_DATABASE=sqlite asks for the
# quick start's embedded default. Set either way, so a developer's DATABASE_URL is never used.
_database = os.environ.setdefault("RDEPLOY_TEST_DATABASE", "postgres")
# The session's cluster (None on SQLite): a test may stop and start it, as a restart would.
postgres_server: PostgresServer | None = None
if _database == "postgres":
    postgres_server = _start_postgres()
    os.environ["DATABASE_URL"] = postgres_server.url("rdeploy")
elif _database == "sqlite":
    os.environ["DATABASE_URL"] = f"sqlite:///{Path(_data_dir) / 'rdeploy.sqlite3'}"
else:
    raise RuntimeError(f"RDEPLOY_TEST_DATABASE must be postgres or sqlite, not {_database!r}")
# Labels every container and image a session starts, so the session removes exactly its own.
os.environ["RDEPLOY_INSTALLATION_ID"] = f"test{secrets.token_hex(4)}"
os.environ.setdefault("RDEPLOY_TEST_REDIS_PORT", str(free_port()))
os.environ["REDIS_URL"] = f"redis://127.0.0.1:{os.environ['RDEPLOY_TEST_REDIS_PORT']}/0"
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
os.environ["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
os.environ["DJANGO_DEBUG"] = "0"
os.environ["DJANGO_HTTPS"] = "0"
os.environ["DJANGO_ALLOWED_HOSTS"] = "localhost,127.0.0.1,testserver"
os.environ["RDEPLOY_PUBLIC_BASE_URL"] = "http://testserver"
# Tests must never reach a real AWS account, whatever the developer's shell holds.
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_name, None)
# Every AWS call of a test (and of the workers it starts) goes to this session's moto
# server (testsupport/moto.py); before the server starts, such a call fails to connect.
os.environ.setdefault("RDEPLOY_TEST_MOTO_PORT", str(free_port()))
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{os.environ['RDEPLOY_TEST_MOTO_PORT']}"
# The SageMaker target's configuration, pointing at what the moto fixtures create.
os.environ["RDEPLOY_S3_BUCKET"] = "rdeploy-test-bucket"
os.environ["RDEPLOY_SAGEMAKER_ROLE_ARN"] = "arn:aws:iam::123456789012:role/rdeploy-test-sagemaker"
os.environ["RDEPLOY_CODEBUILD_ROLE_ARN"] = "arn:aws:iam::123456789012:role/rdeploy-test-codebuild"
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
