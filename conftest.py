"""Fixtures shared by every test: real Redis, a real Celery worker, the three users."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployer.services.tokens import api_token_create
from testsupport.factories import make_user
from testsupport.services import CeleryWorker, RedisServer, WebServer, session_database_url

# The models trained by R once per session (the `r_models` fixture).
pytest_plugins = ["testsupport.r_models"]


@pytest.fixture(scope="session", autouse=True)
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(int(os.environ["RDEPLOY_TEST_REDIS_PORT"]), Path(settings.DATA_DIR) / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _no_runtime_outlives_the_session() -> Iterator[None]:
    """Local endpoint runtimes are detached containers on purpose (they outlive workers); a
    test that leaves one running must not leak it past the session."""
    yield
    from deployer.integrations.containers import cli

    # Every container this session started carries its installation label.
    for name in cli.container_names():
        cli.remove(name)


@pytest.fixture(scope="session")
def celery_worker(django_db_setup: None, django_db_blocker: pytest.FixtureRequest) -> Iterator[CeleryWorker]:
    """A real worker process on the test database; tests using it need transaction=True."""
    worker = CeleryWorker(session_database_url(), Path(settings.DATA_DIR) / "celery-worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def web_server(django_db_setup: None, django_db_blocker: pytest.FixtureRequest) -> Iterator[WebServer]:
    """gunicorn serving config.wsgi on the test database; tests using it need transaction=True."""
    server = WebServer(session_database_url(), Path(settings.DATA_DIR) / "web.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def owner(db: None) -> User:
    return make_user("owner")


@pytest.fixture
def colleague(db: None) -> User:
    """Another ordinary user: must never see or touch the owner's objects."""
    return make_user("colleague")


@pytest.fixture
def staff(db: None) -> User:
    return make_user("staff", is_staff=True)


@pytest.fixture
def api_client_for() -> object:
    """api_client_for(user) -> an APIClient sending that user's fresh API token."""

    def build(user: User) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=user).secret}")
        return client

    return build
