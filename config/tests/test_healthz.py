"""`GET /healthz` (liveness, the process alone) and `GET /readyz` (readiness: database,
broker, worker, container engine; checked once per few seconds; detail for staff and
loopback only), deployer/health.py and config/views.py."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

from deployer import health
from deployer.health import ENGINE_REPORT_KEY, container_engine_report, system_readiness
from testsupport.ports import free_port
from testsupport.services import CeleryWorker, RedisServer

BASE_DIR = Path(__file__).resolve().parents[2]
# An address of the documentation range (RFC 5737): a caller from elsewhere.
REMOTE = "203.0.113.7"


@pytest.fixture(autouse=True)
def _fresh_readiness(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees its own state, not a report another test cached."""
    monkeypatch.setattr(health, "_ready", None)


def _readyz(**extra: str) -> tuple[int, dict]:
    response = Client().get("/readyz", **extra)  # type: ignore[arg-type]
    return response.status_code, response.json()


def _ready_once_the_worker_reported() -> dict:
    # The worker reports when it is ready, which may be just after it answers a ping.
    deadline = time.monotonic() + 30
    while cache.get(ENGINE_REPORT_KEY) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return _readyz()[1]


def _errors_or_names(body: dict) -> list[str]:
    """Every key of the answer that could say more than ok/not ok."""
    return [f"{name}.{key}" for name, value in body.items() if isinstance(value, dict) for key in value if key != "ok"]


def test_healthz_answers_from_the_process_alone_with_database_and_redis_unreachable() -> None:
    closed = free_port()
    env = dict(
        os.environ,
        DATABASE_URL=f"postgres://rdeploy:nothing@127.0.0.1:{closed}/rdeploy",
        REDIS_URL=f"redis://127.0.0.1:{closed}/0",
    )
    script = (
        "import django, json; django.setup(); from django.test import Client; "
        "live = Client().get('/healthz'); ready = Client().get('/readyz'); "
        "print(json.dumps([live.status_code, live.json(), ready.status_code, ready.json()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    live_status, live, ready_status, ready = json.loads(done.stdout.strip().splitlines()[-1])
    assert (live_status, live) == (200, {"ok": True})
    # The same process cannot reach what readiness checks: liveness did not ask.
    assert ready_status == 503
    assert ready["database"]["ok"] is False
    assert ready["broker"]["ok"] is False


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_ready_when_database_broker_worker_and_container_engine_answer(celery_worker: CeleryWorker) -> None:
    cache.delete(ENGINE_REPORT_KEY)
    celery_worker.stop()
    celery_worker.start()
    body = _ready_once_the_worker_reported()
    health._ready = None
    status, body = _readyz()
    assert status == 200
    assert body["ok"] is True
    assert body["database"] == {"ok": True}
    assert body["broker"] == {"ok": True}
    assert body["worker"]["ok"] is True
    assert body["worker"]["workers"]
    assert body["container_engine"]["ok"] is True
    # From elsewhere: the same verdict, without the workers' hostnames.
    status, body = _readyz(REMOTE_ADDR=REMOTE)
    assert status == 200
    assert body == {
        "ok": True,
        "database": {"ok": True},
        "broker": {"ok": True},
        "worker": {"ok": True},
        "container_engine": {"ok": True},
    }


@pytest.mark.django_db
def test_not_ready_when_redis_is_down(settings: SettingsWrapper, tmp_path: Path) -> None:
    # A Redis of the test's own: stopping the session's would fail whatever uses it meanwhile.
    # The worker check (the Celery app's own connection) is shown failing through a live web
    # app in deployer/tests/test_redis_down.py.
    redis = RedisServer(None, tmp_path / "redis")
    redis.start()
    settings.REDIS_URL = redis.url
    redis.stop()
    status, body = _readyz()
    assert status == 503
    assert body["ok"] is False
    assert body["database"] == {"ok": True}
    assert body["broker"]["ok"] is False


@pytest.mark.django_db
def test_readiness_detail_is_for_loopback_and_staff_only() -> None:
    cache.delete(ENGINE_REPORT_KEY)
    status, body = _readyz()
    assert status == 503
    assert "no worker reported on the container engine" in body["container_engine"]["error"]
    assert "no Celery worker answered" in body["worker"]["error"]

    for caller in ({"REMOTE_ADDR": REMOTE}, {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": REMOTE}):
        status, body = _readyz(**caller)
        assert status == 503, caller
        assert body["ok"] is False
        assert body["container_engine"] == {"ok": False}
        assert body["worker"] == {"ok": False}
        assert _errors_or_names(body) == [], caller

    staff = Client()
    staff.force_login(User.objects.create_user("admin", is_staff=True))
    body = staff.get("/readyz", REMOTE_ADDR=REMOTE, HTTP_X_FORWARDED_FOR=REMOTE).json()
    assert "no Celery worker answered" in body["worker"]["error"]
    colleague = Client()
    colleague.force_login(User.objects.create_user("alice"))
    assert _errors_or_names(colleague.get("/readyz", REMOTE_ADDR=REMOTE).json()) == []


@pytest.mark.django_db
def test_many_readiness_calls_cost_one_check() -> None:
    with mock.patch.object(health, "_worker", wraps=health._worker) as ping:
        for _ in range(10):
            assert _readyz(REMOTE_ADDR=REMOTE)[0] == 503
        assert ping.call_count == 1

        health._ready = None
        answers: list[dict] = []

        def ask() -> None:
            try:
                answers.append(system_readiness(detail=False))
            finally:
                connection.close()

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(answers) == 8
        assert ping.call_count == 2


@pytest.mark.django_db
def test_readiness_says_the_base_image_is_missing(settings: SettingsWrapper) -> None:
    settings.BASE_IMAGE = "localhost/rdeploy-base:does-not-exist"
    report = container_engine_report()
    assert report["ok"] is False
    _, body = _readyz()
    assert body["ok"] is False
    assert "no base image localhost/rdeploy-base:does-not-exist" in body["container_engine"]["error"]
    assert "scripts/base_image.sh" in body["container_engine"]["error"]


@pytest.mark.django_db
def test_readiness_says_there_is_no_engine_command(
    settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings.CONTAINER_CLI = "docker"
    monkeypatch.setenv("PATH", str(tmp_path))
    container_engine_report()
    error = _readyz()[1]["container_engine"]["error"]
    assert "there is no docker command" in error
    assert "model code runs only in containers" in error


@pytest.mark.django_db
def test_health_checks_over_plain_http_are_not_redirected_to_https(settings: SettingsWrapper) -> None:
    settings.SECURE_SSL_REDIRECT = True
    assert Client().get("/healthz").status_code == 200
    assert Client().get("/readyz").status_code in (200, 503)
    assert Client().get("/api/v1/tokens/").status_code == 301
