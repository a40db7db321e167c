"""REST routes of shadow rollout (issue 16): start, show with its comparison, promote, stop.

The services run for real (rows, steps, the enqueued task); no worker runs them here (the
end-to-end tests with real R are the local target's), so the answers and rows are those a
client sees right after asking.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from deployer import jobs, task_names
from deployer.models import Deployment, Endpoint, ModelVersion, Shadow, ShadowPair
from deployer.services.tokens import api_token_create
from deployer.tests.test_api_fuzz import schema as fuzz_schema
from deployer.tests.test_api_fuzz import wsgi_keeps_the_test_transaction  # noqa: F401  (a fixture)
from testsupport.factories import make_endpoint, make_model_version, make_shadow

pytestmark = pytest.mark.django_db

ClientFor = Callable[[User], APIClient]


@pytest.fixture
def live(owner: User) -> Endpoint:
    """A live endpoint serving v1 of iris, with its finished rollout."""
    v1 = make_model_version(owner, status=ModelVersion.Status.READY)
    endpoint = make_endpoint(owner, "iris", model_version=v1, status=Endpoint.Status.LIVE)
    endpoint.current_deployment = Deployment.objects.create(
        endpoint=endpoint, model_version=v1, kind=Deployment.Kind.CREATE, status=Deployment.Status.SUCCEEDED
    )
    endpoint.save()
    return endpoint


@pytest.fixture
def v2(owner: User) -> ModelVersion:
    return make_model_version(owner, status=ModelVersion.Status.READY)


def url(endpoint: Endpoint, suffix: str = "") -> str:
    return f"/api/v1/endpoints/{endpoint.name}/shadow{suffix}"


def start(client: APIClient, endpoint: Endpoint, **body: Any) -> Any:
    return client.post(url(endpoint), body, format="json")


def test_starting_a_shadow_answers_202_and_leaves_the_live_version_alone(
    owner: User, live: Endpoint, v2: ModelVersion, api_client_for: ClientFor, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = start(api_client_for(owner), live, model=v2.pk, sample_percent=25, duration="2h")

    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["status"], body["sample_percent"], body["duration"]) == ("starting", 25, "02:00:00")
    assert body["model"] == {"id": v2.pk, "name": "iris", "version": 2}
    assert (body["deployment"]["kind"], body["deployment"]["status"]) == ("shadow", "pending")
    assert body["deployment"]["steps"], "the shadow deployment's steps are planned"
    assert body["comparison"]["requests"] == 0
    shadow = Shadow.objects.get(pk=body["id"])
    assert (shadow.endpoint, shadow.model_version, shadow.deployment.kind) == (live, v2, Deployment.Kind.SHADOW)
    live.refresh_from_db()
    assert (live.status, live.model_version_id) == (Endpoint.Status.LIVE, shadow.endpoint.model_version_id)
    assert (task_names.DEPLOYMENT_ADVANCE, [shadow.deployment.pk]) in jobs.current_app.sent  # type: ignore[attr-defined]


def test_the_shadow_is_shown_with_its_comparison(
    owner: User, live: Endpoint, v2: ModelVersion, api_client_for: ClientFor
) -> None:
    shadow = make_shadow(live, v2, copies_sent=4, copies_dropped=1)
    ShadowPair.objects.bulk_create(
        [
            ShadowPair(shadow=shadow, live_status=200, shadow_status=200, live_ms=4, shadow_ms=6,
                       live_output=["setosa", "virginica"], shadow_output=["setosa", "versicolor"]),
            ShadowPair(shadow=shadow, live_status=200, shadow_status=500, live_ms=8, shadow_ms=2,
                       shadow_error="object 'x' not found"),
        ]
    )  # fmt: skip

    response = api_client_for(owner).get(url(live))

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["status"], body["copies_sent"], body["copies_dropped"]) == (shadow.pk, "running", 4, 1)
    comparison = body["comparison"]
    # One row of two agrees; one request of two failed in the shadow.
    assert (comparison["kind"], comparison["requests"], comparison["agreement_rate"]) == ("class", 2, 0.5)
    assert comparison["confusion"] == {
        "labels": ["setosa", "versicolor", "virginica"],
        "others": False,
        "counts": [[1, 0, 0], [0, 0, 0], [0, 1, 0]],
    }
    assert (comparison["shadow_errors"], comparison["error_rate"]) == (1, 0.5)
    assert comparison["top_errors"] == [{"message": "object 'x' not found", "count": 1}]
    assert comparison["live_latency"] == {"p50": 4.0, "p99": 8.0}
    assert comparison["histogram"] is None


def test_the_latest_shadow_is_shown_once_it_ended_and_404_when_there_never_was_one(
    owner: User, live: Endpoint, v2: ModelVersion, api_client_for: ClientFor
) -> None:
    client = api_client_for(owner)
    assert client.get(url(live)).status_code == 404
    make_shadow(live, v2, status=Shadow.Status.ENDED, outcome="Ended: its duration (2:00:00) is over.")
    response = client.get(url(live))
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["outcome"]) == (
        "ended",
        "Ended: its duration (2:00:00) is over.",
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sample_percent": 0, "duration": "2h"}, "sample_percent"),
        ({"sample_percent": 101, "duration": "2h"}, "sample_percent"),
        ({"sample_percent": 10}, "duration"),
    ],
)
def test_a_request_outside_the_rules_is_400_naming_the_field(
    owner: User, live: Endpoint, v2: ModelVersion, api_client_for: ClientFor, body: dict[str, Any], field: str
) -> None:
    response = start(api_client_for(owner), live, model=v2.pk, **body)
    assert response.status_code == 400
    assert field in response.json()
    assert not Shadow.objects.exists()


@pytest.mark.parametrize("duration", ["forever", "1m", "9999d"])
def test_a_duration_the_service_refuses_is_400_saying_the_range(
    owner: User, live: Endpoint, v2: ModelVersion, api_client_for: ClientFor, duration: str
) -> None:
    response = start(api_client_for(owner), live, model=v2.pk, sample_percent=10, duration=duration)
    assert response.status_code == 400
    assert "'duration' must be a whole number of minutes, hours or days" in response.json()["detail"]


def test_the_live_version_cannot_shadow_itself(owner: User, live: Endpoint, api_client_for: ClientFor) -> None:
    assert live.model_version is not None
    response = start(api_client_for(owner), live, model=live.model_version.pk, sample_percent=10, duration="1h")
    assert response.status_code == 400
    assert "already serves" in response.json()["detail"]


def test_a_shadow_needs_a_live_endpoint(
    owner: User, live: Endpoint, v2: ModelVersion, api_client_for: ClientFor
) -> None:
    Endpoint.objects.filter(pk=live.pk).update(status=Endpoint.Status.STOPPED)
    response = start(api_client_for(owner), live, model=v2.pk, sample_percent=10, duration="1h")
    assert response.status_code == 409
    assert "needs a live endpoint" in response.json()["detail"]


def test_a_second_shadow_while_one_runs_is_a_409(
    owner: User, live: Endpoint, v2: ModelVersion, api_client_for: ClientFor
) -> None:
    running = make_shadow(live, v2)
    v3 = make_model_version(owner, status=ModelVersion.Status.READY)
    response = start(api_client_for(owner), live, model=v3.pk, sample_percent=10, duration="1h")
    assert response.status_code == 409
    assert "already has a shadow" in response.json()["detail"]
    assert list(Shadow.objects.values_list("pk", flat=True)) == [running.pk]


@pytest.mark.parametrize(
    ("suffix", "kind", "status", "outcome"),
    [
        ("/promote", "promote", Shadow.Status.PROMOTING, ""),
        ("/stop", "end_shadow", Shadow.Status.ENDING, "Stopped by its owner."),
    ],
)
def test_promote_and_stop_answer_202_with_their_deployment(
    owner: User, live: Endpoint, v2: ModelVersion, api_client_for: ClientFor, suffix: str, kind: str, status: str,
    outcome: str,
) -> None:  # fmt: skip
    shadow = make_shadow(live, v2)
    serving = live.model_version_id
    response = api_client_for(owner).post(url(live, suffix))
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["kind"], body["status"], body["model"]["id"]) == (kind, "pending", v2.pk)
    shadow.refresh_from_db()
    assert (shadow.status, shadow.outcome) == (status, outcome)
    # Until the worker switches (promote) or removes the shadow (stop), v1 serves.
    live.refresh_from_db()
    assert live.model_version_id == serving


@pytest.mark.parametrize("suffix", ["/promote", "/stop"])
def test_promote_or_stop_without_a_running_shadow_is_a_409(
    owner: User, live: Endpoint, v2: ModelVersion, api_client_for: ClientFor, suffix: str
) -> None:
    client = api_client_for(owner)
    assert client.post(url(live, suffix)).status_code == 409
    make_shadow(live, v2, status=Shadow.Status.STARTING, started_at=None)
    response = client.post(url(live, suffix))
    assert response.status_code == 409
    assert "starting" in response.json()["detail"]


def test_another_users_endpoint_is_404_on_every_shadow_route(
    owner: User, colleague: User, live: Endpoint, v2: ModelVersion, api_client_for: ClientFor
) -> None:
    shadow = make_shadow(live, v2)
    client = api_client_for(colleague)
    theirs = make_model_version(colleague, status=ModelVersion.Status.READY)
    assert client.get(url(live)).status_code == 404
    assert start(client, live, model=theirs.pk, sample_percent=10, duration="1h").status_code == 404
    assert client.post(url(live, "/promote")).status_code == 404
    assert client.post(url(live, "/stop")).status_code == 404
    shadow.refresh_from_db()
    assert shadow.status == Shadow.Status.RUNNING


def test_another_users_model_cannot_be_the_shadow(
    owner: User, colleague: User, live: Endpoint, api_client_for: ClientFor
) -> None:
    theirs = make_model_version(colleague, status=ModelVersion.Status.READY)
    response = start(api_client_for(owner), live, model=theirs.pk, sample_percent=10, duration="1h")
    # As on every route that takes a model id: the same answer as for an id that does not exist.
    assert response.status_code == 400
    assert response.json() == {"model": f"No model with id {theirs.pk}."}
    assert not Shadow.objects.exists()


@pytest.mark.usefixtures("wsgi_keeps_the_test_transaction")
@pytest.mark.parametrize(
    ("live_output", "shadow_output"),
    [(["a", "b"], ["a", "a"]), ([1.5, 2.0], [1.0, 2.5]), ([{"a": 0.75, "b": 0.25}], [{"a": 0.5, "b": 0.5}])],
    ids=["class", "numeric", "probabilities"],
)
def test_the_shadow_with_its_comparison_matches_the_openapi_description(
    owner: User, live: Endpoint, v2: ModelVersion, live_output: Any, shadow_output: Any
) -> None:
    # The fuzz test meets only endpoints without a shadow here: every figure filled in instead.
    shadow = make_shadow(live, v2)
    ShadowPair.objects.bulk_create(
        [
            ShadowPair(shadow=shadow, live_status=200, shadow_status=200, live_ms=3, shadow_ms=4,
                       live_output=live_output, shadow_output=shadow_output),
            ShadowPair(shadow=shadow, live_status=200, shadow_status=None, live_ms=3, shadow_error="timed out"),
        ]
    )  # fmt: skip
    case = fuzz_schema["/api/v1/endpoints/{name}/shadow/"]["GET"].Case(path_parameters={"name": live.name})
    response = case.call_and_validate(headers={"Authorization": f"Token {api_token_create(user=owner).secret}"})
    assert response.status_code == 200
