import pytest
from django.test import Client

from testsupport.services import CeleryWorker, RedisServer


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_healthz_is_ok_when_database_broker_and_worker_answer(celery_worker: CeleryWorker) -> None:
    response = Client().get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["database"] == {"ok": True}
    assert body["broker"] == {"ok": True}
    assert body["worker"]["ok"] is True


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
