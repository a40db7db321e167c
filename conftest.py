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
from testsupport.moto import MotoServer
from testsupport.services import CeleryWorker, RedisServer, WebServer, session_database_url

# The models trained by R once per session (the `r_models` fixture).
pytest_plugins = ["testsupport.r_models"]

# The SQLite smoke run of scripts/test.sh (docs/testing.md), marked `smoke` here: SQLite is the
# quick start's embedded database, so the paths that share it between processes stay tested
# (API writes, upload and inspection by a real worker, a local deploy, the public gateway,
# the dashboard's polls).
SMOKE_TESTS = frozenset(
    {
        "tasks/tests/test_worker.py::test_a_real_worker_runs_a_task_sent_through_redis",
        "deployer/tests/test_model_upload.py::test_uploading_the_same_bytes_again_returns_the_existing_version",
        "deployer/tests/test_model_upload.py::test_an_uploaded_random_forest_is_inspected_by_the_worker_and_becomes_ready",
        "deployer/tests/test_endpoints_api.py::test_names_are_unique_in_the_installation",
        "deployer/tests/test_pipeline.py::test_a_model_goes_live_updates_rolls_back_and_is_deleted",
        "deployer/tests/test_gateway.py::test_the_right_key_reaches_the_runtime_with_only_the_forwarded_headers",
        "webui/tests/test_pages.py::test_endpoints_list_polls_only_while_busy_and_sends_only_changed_rows",
        "webui/tests/test_pages.py::test_log_poll_returns_lines_after_the_cursor_and_advances_it",
    }
)


@pytest.hookimpl(tryfirst=True)  # before `-m smoke` deselects what is not marked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marked = set()
    for item in items:
        test = item.nodeid.split("[", 1)[0]
        if test in SMOKE_TESTS:
            item.add_marker(pytest.mark.smoke)
            marked.add(test)
    # A renamed test would silently shrink the smoke run: name it instead.
    if config.getoption("markexpr") == "smoke" and marked != SMOKE_TESTS:
        raise pytest.UsageError(f"conftest.py's SMOKE_TESTS names tests not found: {sorted(SMOKE_TESTS - marked)}")


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
def moto_server() -> Iterator[MotoServer]:
    """One moto server per session on the port AWS_ENDPOINT_URL names (testsupport.env):
    every directory's tests share it, since the port can be held only once."""
    server = MotoServer()
    server.start()
    yield server
    server.stop()


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
