import time
from pathlib import Path

import pytest
from django.core.cache import cache
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

from deployer.health import ENGINE_REPORT_KEY, container_engine_report
from testsupport.services import CeleryWorker, RedisServer


def _healthz_once_the_worker_reported() -> dict:
    # The worker reports when it is ready, which may be just after it answers a ping.
    deadline = time.monotonic() + 30
    while cache.get(ENGINE_REPORT_KEY) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return Client().get("/healthz").json()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_healthz_is_ok_when_database_broker_worker_and_container_engine_answer(celery_worker: CeleryWorker) -> None:
    cache.delete(ENGINE_REPORT_KEY)
    celery_worker.stop()
    celery_worker.start()
    body = _healthz_once_the_worker_reported()
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert body["ok"] is True
    assert body["database"] == {"ok": True}
    assert body["broker"] == {"ok": True}
    assert body["worker"]["ok"] is True
    assert body["container_engine"]["ok"] is True


@pytest.mark.django_db
def test_healthz_is_503_when_redis_is_down(redis_server: RedisServer) -> None:
    redis_server.stop()
    try:
        response = Client().get("/healthz")
    finally:
        redis_server.start()
    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False
    assert body["database"] == {"ok": True}
    assert body["broker"]["ok"] is False
    assert body["worker"]["ok"] is False


@pytest.mark.django_db
def test_healthz_says_no_worker_reported_on_the_container_engine() -> None:
    cache.delete(ENGINE_REPORT_KEY)
    response = Client().get("/healthz")
    assert response.status_code == 503
    assert "no worker reported on the container engine" in response.json()["container_engine"]["error"]


@pytest.mark.django_db
def test_healthz_says_the_base_image_is_missing(settings: SettingsWrapper) -> None:
    settings.BASE_IMAGE = "localhost/rdeploy-base:does-not-exist"
    report = container_engine_report()
    assert report["ok"] is False
    body = Client().get("/healthz").json()
    assert body["ok"] is False
    assert "no base image localhost/rdeploy-base:does-not-exist" in body["container_engine"]["error"]
    assert "scripts/base_image.sh" in body["container_engine"]["error"]


@pytest.mark.django_db
def test_healthz_says_there_is_no_engine_command(
    settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings.CONTAINER_CLI = "docker"
    monkeypatch.setenv("PATH", str(tmp_path))
    container_engine_report()
    error = Client().get("/healthz").json()["container_engine"]["error"]
    assert "there is no docker command" in error
    assert "model code runs only in containers" in error
