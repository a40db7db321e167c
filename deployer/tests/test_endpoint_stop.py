"""Stopping and starting an endpoint (issue 14): on the local target with real containers
and R, through the services, REST and the public route."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from deployer import task_names
from deployer.integrations.containers import runtimes
from deployer.models import Deployment, Endpoint, ExternalResource, LogLine
from deployer.services import gateway
from deployer.services.endpoints import (
    EndpointConflict,
    endpoint_create,
    endpoint_delete,
    endpoint_idle_stop_notice,
    endpoint_invoke,
    endpoint_rollback,
    endpoint_start,
    endpoint_stop,
    endpoint_stopped_idle_since,
    endpoint_update,
    endpoint_wake,
    endpoints_stop_idle,
)
from deployer.targets import get_target
from deployer.targets.base import TargetOptionsError
from deployer.tests.pipeline_support import container_running, finish, iris_version
from testsupport.factories import make_endpoint, make_model_version
from testsupport.pipeline import drive
from testsupport.r_models import expected, rows_csv
from testsupport.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_gateway_routes")]


def predict(owner: User, name: str, rows: list[Any]) -> tuple[int, object]:
    result = endpoint_invoke(user=owner, name=name, body=rows_csv(rows), headers={"Content-Type": "text/csv"})
    assert result is not None
    return result.status, json.loads(result.body)


def stopped_endpoint(owner: User, name: str = "asleep", **fields: Any) -> Endpoint:
    version = make_model_version(owner, status="ready")
    return make_endpoint(owner, name, status=Endpoint.Status.STOPPED, model_version=version, **fields)


@pytest.mark.slow
@pytest.mark.usefixtures("no_runtime_outlives_the_test")
def test_stopping_removes_the_runtime_and_starting_serves_the_same_answers_without_a_build(
    owner: User, iris_models: Path
) -> None:
    truth = expected(iris_models)
    issued = endpoint_create(owner=owner, name="nap", model_version=iris_version(owner, iris_models, "v1"))
    create = drive(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    assert create.status == Deployment.Status.SUCCEEDED, create.error
    endpoint = Endpoint.objects.get(name="nap")
    first = endpoint.runtime["container"]
    image = ExternalResource.objects.get(identifier=first).details["image"]
    assert predict(owner, "nap", truth["rows"]) == (200, {"predictions": truth["v1"]})

    stop = endpoint_stop(endpoint=endpoint)
    assert Endpoint.objects.get(name="nap").status == Endpoint.Status.STOPPING
    assert drive(stop).status == Deployment.Status.SUCCEEDED, stop.error

    endpoint.refresh_from_db()
    assert (endpoint.status, endpoint.runtime) == (Endpoint.Status.STOPPED, {})
    assert runtimes.names(endpoint="nap") == []
    status, body = predict(owner, "nap", truth["rows"])
    assert (status, body) == (
        503,
        {"message": "Endpoint nap is stopped; its owner can start it.", "reason": "endpoint is stopped"},
    )

    start = endpoint_start(endpoint=endpoint)
    assert [step.name for step in start.steps.all()] == [
        "resume_runtime",
        "wait_healthy",
        "smoke_test",
        "switch_traffic",
    ]
    assert drive(start).status == Deployment.Status.SUCCEEDED, start.error

    endpoint.refresh_from_db()
    gateway.route_forget("nap")
    assert endpoint.status == Endpoint.Status.LIVE
    assert endpoint.model_version == create.model_version
    second = endpoint.runtime["container"]
    assert second != first
    assert container_running(second)
    # The kept image and model directory, nothing built: the create's image serves again.
    assert ExternalResource.objects.get(identifier=second).details["image"] == image
    assert predict(owner, "nap", truth["rows"]) == (200, {"predictions": truth["v1"]})

    # A stopped endpoint can still be deleted.
    stop = drive(endpoint_stop(endpoint=endpoint))
    delete = endpoint_delete(endpoint=endpoint)
    assert delete is not None
    assert drive(delete).status == Deployment.Status.SUCCEEDED
    assert Endpoint.objects.get(name="nap").status == Endpoint.Status.DELETED
    assert runtimes.names(endpoint="nap") == []


def test_a_stopped_endpoint_refuses_update_rollback_and_stop_and_a_live_one_refuses_start(owner: User) -> None:
    endpoint = stopped_endpoint(owner, previous_model_version=make_model_version(owner, status="ready"))
    other = make_model_version(owner, status="ready")

    for change in (
        lambda: endpoint_update(endpoint=endpoint, model_version=other),
        lambda: endpoint_rollback(endpoint=endpoint),
    ):
        with pytest.raises(EndpointConflict, match="is stopped; start it before changing its model"):
            change()
    with pytest.raises(EndpointConflict, match="only a live endpoint can be stopped"):
        endpoint_stop(endpoint=endpoint)
    Endpoint.objects.filter(pk=endpoint.pk).update(status=Endpoint.Status.LIVE)
    with pytest.raises(EndpointConflict, match="only a stopped endpoint can be started"):
        endpoint_start(endpoint=endpoint)
    assert not Deployment.objects.filter(endpoint=endpoint).exists()


def test_stop_and_start_over_rest_answer_202_and_409_with_the_reason(owner: User, api_client_for: Any) -> None:
    endpoint = stopped_endpoint(owner)
    client = api_client_for(owner)

    refused = client.post("/api/v1/endpoints/asleep/stop")
    assert refused.status_code == 409
    assert "only a live endpoint can be stopped" in json.dumps(refused.json())

    started = client.post("/api/v1/endpoints/asleep/start")
    assert started.status_code == 202
    assert started.json()["status"] == Endpoint.Status.STARTING
    assert started.json()["deployment"]["kind"] == Deployment.Kind.START
    assert client.post("/api/v1/endpoints/asleep/start").status_code == 409
    endpoint.refresh_from_db()
    assert endpoint.current_deployment is not None
    assert Deployment.objects.filter(endpoint=endpoint, kind=Deployment.Kind.START).count() == 1


def test_other_users_cannot_stop_or_start_an_endpoint(owner: User, colleague: User, api_client_for: Any) -> None:
    stopped_endpoint(owner)
    client = api_client_for(colleague)

    assert client.post("/api/v1/endpoints/asleep/start").status_code == 404
    assert client.post("/api/v1/endpoints/asleep/stop").status_code == 404
    assert Endpoint.objects.get(name="asleep").status == Endpoint.Status.STOPPED


def test_a_stopped_endpoints_routes_answer_503_with_retry_after_and_the_reason(
    owner: User, api_client_for: Any
) -> None:
    issued_key = "rdk_test-key"
    stopped_endpoint(owner, public=True, api_key_hash=gateway.hash_secret(issued_key))

    public = Client().post(
        "/e/asleep/invocations", data=b"[]", content_type="application/json", HTTP_X_API_KEY=issued_key
    )
    token = api_client_for(owner).post(
        "/api/v1/endpoints/asleep/invocations", data=b"[]", content_type="application/json"
    )

    for response in (public, token):
        assert response.status_code == 503
        assert response["Retry-After"] == str(gateway.STOPPED_RETRY_AFTER)
        assert response.json()["reason"] == "endpoint is stopped"
    # Without wake_on_request nothing starts it.
    assert not Deployment.objects.exists()


def test_a_call_to_a_stopped_endpoint_with_wake_on_request_enqueues_its_wake(owner: User) -> None:
    from deployer import jobs

    endpoint = stopped_endpoint(owner, options={"wake_on_request": True})

    result = endpoint_invoke(user=owner, name="asleep", body=b"[]", headers={})

    assert result is not None
    assert (result.status, result.headers["Retry-After"]) == (503, str(gateway.WAKE_RETRY_AFTER))
    assert json.loads(result.body)["reason"] == "endpoint is stopped"
    assert jobs.current_app.sent == [(task_names.ENDPOINT_WAKE, [endpoint.pk])]  # type: ignore[attr-defined]


def test_waking_twice_starts_the_endpoint_once_and_only_with_wake_on_request(owner: User) -> None:
    sleepy = stopped_endpoint(owner, options={"wake_on_request": True})
    plain = stopped_endpoint(owner, "plain")

    assert endpoint_wake(endpoint_id=sleepy.pk) is not None
    assert endpoint_wake(endpoint_id=sleepy.pk) is None
    assert endpoint_wake(endpoint_id=plain.pk) is None

    assert Deployment.objects.filter(endpoint=sleepy, kind=Deployment.Kind.START).count() == 1
    assert not Deployment.objects.filter(endpoint=plain).exists()
    assert Endpoint.objects.get(pk=sleepy.pk).status == Endpoint.Status.STARTING


@pytest.mark.slow
@pytest.mark.usefixtures("no_runtime_outlives_the_test")
def test_with_wake_on_request_calls_to_a_stopped_endpoint_answer_503_until_the_one_start_makes_it_live(
    owner: User, iris_models: Path, celery_worker: Any
) -> None:
    truth = expected(iris_models)
    issued = endpoint_create(
        owner=owner,
        name="sleepy",
        model_version=iris_version(owner, iris_models, "v1"),
        options={"wake_on_request": True},
        public=True,
    )
    assert issued.api_key is not None
    finish(issued.endpoint.current_deployment)  # type: ignore[arg-type]
    assert finish(endpoint_stop(endpoint=issued.endpoint)).status == Deployment.Status.SUCCEEDED

    def call() -> Any:
        body = rows_csv(truth["rows"])
        return Client().post("/e/sleepy/invocations", data=body, content_type="text/csv", HTTP_X_API_KEY=issued.api_key)

    first = call()
    assert first.status_code == 503
    assert first.json()["reason"] == "endpoint is stopped"
    assert first["Retry-After"] == str(gateway.WAKE_RETRY_AFTER)
    answered = wait_for(lambda: (response := call()).status_code == 200 and response, timeout=120, interval=0.2)

    assert json.loads(answered.content) == {"predictions": truth["v1"]}
    # However many calls found it stopped or starting, it was started once.
    starts = Deployment.objects.filter(endpoint=issued.endpoint, kind=Deployment.Kind.START)
    assert [start.status for start in starts] == [Deployment.Status.SUCCEEDED]
    assert Endpoint.objects.get(name="sleepy").status == Endpoint.Status.LIVE


@pytest.mark.parametrize("target", ["local", "sagemaker"])
def test_wake_on_request_is_a_boolean_option_of_every_target(target: str) -> None:
    assert get_target(target).validate_options({"wake_on_request": True})["wake_on_request"] is True
    with pytest.raises(TargetOptionsError, match="'wake_on_request' must be true or false"):
        get_target(target).validate_options({"wake_on_request": "yes"})


def test_a_non_boolean_wake_on_request_is_refused_with_400(owner: User, api_client_for: Any) -> None:
    model = make_model_version(owner, status="ready")
    response = api_client_for(owner).post(
        "/api/v1/endpoints/",
        {"name": "woken", "model": model.pk, "options": {"wake_on_request": 1}},
        format="json",
    )
    assert response.status_code == 400
    assert "wake_on_request" in json.dumps(response.json())
    assert not Endpoint.objects.filter(name="woken").exists()


def idle_endpoint(owner: User, name: str, *, idle_for: timedelta, last_call: timedelta | None) -> Endpoint:
    now = timezone.now()
    version = make_model_version(owner, status="ready")
    endpoint = make_endpoint(
        owner, name, status=Endpoint.Status.LIVE, model_version=version, options={"idle_stop_after": "30m"}
    )
    Deployment.objects.create(
        endpoint=endpoint,
        model_version=version,
        kind=Deployment.Kind.CREATE,
        status=Deployment.Status.SUCCEEDED,
        finished_at=now - idle_for,
    )
    if last_call is not None:
        line = LogLine.objects.create(
            endpoint=endpoint, source=LogLine.Source.RUNTIME, message="x POST /invocations 200 3 ms (queued 0 ms)"
        )
        LogLine.objects.filter(pk=line.pk).update(created_at=now - last_call)
    return endpoint


def test_the_reconciler_stops_an_endpoint_idle_for_its_idle_stop_after_and_no_other(owner: User) -> None:
    idle = idle_endpoint(owner, "idle", idle_for=timedelta(hours=2), last_call=timedelta(minutes=31))
    called = idle_endpoint(owner, "called", idle_for=timedelta(hours=2), last_call=timedelta(minutes=29))
    fresh = idle_endpoint(owner, "fresh", idle_for=timedelta(minutes=10), last_call=None)
    plain = make_endpoint(owner, "plain", status=Endpoint.Status.LIVE, model_version=make_model_version(owner))
    Endpoint.objects.filter(pk=plain.pk).update(created_at=timezone.now() - timedelta(days=365))

    assert endpoints_stop_idle() == 1

    assert Endpoint.objects.get(pk=idle.pk).status == Endpoint.Status.STOPPING
    assert Deployment.objects.filter(endpoint=idle, kind=Deployment.Kind.STOP).count() == 1
    assert LogLine.objects.filter(endpoint=idle, message__contains="longer than its idle_stop_after (30m)").exists()
    for other in (called, fresh, plain):
        assert Endpoint.objects.get(pk=other.pk).status == Endpoint.Status.LIVE
    # Already stopping: a second pass starts nothing more.
    assert endpoints_stop_idle() == 0
    # Once stopped, the page can say since when it was idle.
    Endpoint.objects.filter(pk=idle.pk).update(status=Endpoint.Status.STOPPED)
    idle.refresh_from_db()
    last_call = LogLine.objects.get(endpoint=idle, message__contains="/invocations").created_at
    assert endpoint_stopped_idle_since(idle) == last_call


def test_an_endpoint_without_the_option_follows_its_targets_default_and_off_opts_out(
    owner: User, settings: Any
) -> None:
    settings.IDLE_STOP_AFTER = {"local": timedelta(hours=1), "sagemaker": None}
    defaulted = idle_endpoint(owner, "defaulted", idle_for=timedelta(hours=2), last_call=None)
    opted_out = idle_endpoint(owner, "opted-out", idle_for=timedelta(hours=2), last_call=None)
    Endpoint.objects.filter(pk=defaulted.pk).update(options={})
    Endpoint.objects.filter(pk=opted_out.pk).update(options={"idle_stop_after": "off"})

    assert endpoints_stop_idle() == 1
    assert Endpoint.objects.get(pk=defaulted.pk).status == Endpoint.Status.STOPPING
    assert Endpoint.objects.get(pk=opted_out.pk).status == Endpoint.Status.LIVE


def test_the_idle_notice_shows_from_a_day_before_or_half_a_shorter_period(owner: User) -> None:
    endpoint = idle_endpoint(owner, "warned", idle_for=timedelta(hours=2), last_call=timedelta(minutes=10))
    now = timezone.now()
    assert endpoint_idle_stop_notice(endpoint, now=now) is None
    notice = endpoint_idle_stop_notice(endpoint, now=now + timedelta(minutes=6))
    assert notice is not None
    assert notice.stops_at - notice.idle_since == timedelta(minutes=30)
    Endpoint.objects.filter(pk=endpoint.pk).update(options={"idle_stop_after": "3d"})
    endpoint.refresh_from_db()
    assert endpoint_idle_stop_notice(endpoint, now=now + timedelta(days=1, hours=23)) is None
    assert endpoint_idle_stop_notice(endpoint, now=now + timedelta(days=2, hours=1)) is not None


@pytest.mark.parametrize("value", ["4m", "30", 30, True, "31d", "1.5h", "72H", " 72h", "0h", None])
def test_idle_stop_after_is_off_or_a_whole_number_of_minutes_hours_or_days(value: object) -> None:
    for target in ("local", "sagemaker"):
        assert get_target(target).validate_options({"idle_stop_after": "72h"})["idle_stop_after"] == "72h"
        with pytest.raises(TargetOptionsError, match="'idle_stop_after' must be \"off\" or a whole number"):
            get_target(target).validate_options({"idle_stop_after": value})


def test_a_bad_idle_stop_after_is_refused_with_400(owner: User, api_client_for: Any) -> None:
    model = make_model_version(owner, status="ready")
    response = api_client_for(owner).post(
        "/api/v1/endpoints/",
        {"name": "sleeper", "model": model.pk, "options": {"idle_stop_after": "3 days"}},
        format="json",
    )
    assert response.status_code == 400
    assert "idle_stop_after" in json.dumps(response.json())
    assert not Endpoint.objects.filter(name="sleeper").exists()
