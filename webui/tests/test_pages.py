"""Dashboard views through Django's test client: permissions, fragments, polling rules."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from deployer.models import ApiToken, Deployment, DeploymentStep, Endpoint, LogLine, ModelVersion
from deployer.services.tokens import api_token_authenticate
from testsupport.factories import make_endpoint, make_model_version

HTMX = {"HX-Request": "true"}

# The record deployer/r/inspect.R writes for a randomForest on iris.
INSPECTION = {
    "class": ["randomForest.formula", "randomForest"],
    "r_version": {"writer": "4.2.2", "reader": "4.2.2"},
    "packages": {"required": [{"name": "randomForest", "version": "4.7-1.1"}], "predict_method": "randomForest"},
    "schema": {
        "columns": [
            {"name": "Sepal.Length", "type": "numeric"},
            {"name": "Species", "type": "factor", "levels": ["setosa", "versicolor"]},
        ]
    },
    "prediction": {"kind": "class", "probabilities": True},
    "timings": {"r_script": {"load": 0.2}, "total": 1.234},
    "example": {
        "content_type": "application/json",
        "payload": [{"Sepal.Length": 5.1, "Species": "setosa"}],
        "rows": 1,
        "predictions": {"predictions": ["setosa"]},
    },
}


def logged_in(client: Client, user: User) -> Client:
    client.force_login(user)
    return client


def deploying_endpoint(owner: User, name: str = "iris") -> Endpoint:
    version = make_model_version(owner, status=ModelVersion.Status.READY, inspection=INSPECTION)
    endpoint = make_endpoint(owner, name, status=Endpoint.Status.DEPLOYING)
    deployment = Deployment.objects.create(
        endpoint=endpoint, model_version=version, kind=Deployment.Kind.CREATE, status=Deployment.Status.RUNNING
    )
    start = timezone.now() - timedelta(seconds=3)
    DeploymentStep.objects.create(
        deployment=deployment,
        position=0,
        name="prepare model directory",
        status=DeploymentStep.Status.SUCCEEDED,
        started_at=start,
        finished_at=start + timedelta(milliseconds=1500),
    )
    DeploymentStep.objects.create(
        deployment=deployment, position=1, name="start runtime", status=DeploymentStep.Status.RUNNING, started_at=start
    )
    endpoint.current_deployment = deployment
    endpoint.save()
    return endpoint


def finish(endpoint: Endpoint, status: str, **fields: object) -> None:
    """The rollout ends: the endpoint takes `status`, its deployment a terminal state."""
    outcome = Deployment.Status.FAILED if status == Endpoint.Status.FAILED else Deployment.Status.SUCCEEDED
    Deployment.objects.filter(endpoint=endpoint).update(status=outcome, finished_at=timezone.now())
    Endpoint.objects.filter(pk=endpoint.pk).update(status=status, updated_at=timezone.now(), **fields)


@pytest.mark.parametrize("path", ["/", "/models/", "/endpoints/", "/endpoints/iris/", "/tokens/"])
def test_every_page_sends_anonymous_visitors_to_the_login_form(client: Client, db: None, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_login_page_has_labelled_username_and_password_fields(client: Client, db: None) -> None:
    html = client.get("/accounts/login/").content.decode()
    assert '<label for="id_username">Username</label>' in html
    assert '<label for="id_password">Password</label>' in html
    assert ">Log in</button>" in html


def test_navigation_links_models_endpoints_and_api_tokens(client: Client, owner: User) -> None:
    html = logged_in(client, owner).get("/models/").content.decode()
    nav = html[html.index('<nav aria-label="Main">') : html.index("</nav>")]
    assert list(re.findall(r">([^<>]+)</a>", nav)) == ["Models", "Endpoints", "API tokens"]
    assert 'href="/models/" aria-current="page"' in nav
    assert "htmx.min.js" in html


def test_models_list_shows_only_the_users_own_versions(client: Client, owner: User, colleague: User) -> None:
    make_model_version(owner, "iris-forest")
    make_model_version(colleague, "secret-model")
    html = logged_in(client, owner).get("/models/").content.decode()
    assert "iris-forest" in html
    assert "secret-model" not in html


def test_model_page_shows_class_schema_example_and_predictions(client: Client, owner: User) -> None:
    version = make_model_version(owner, status=ModelVersion.Status.READY, inspection=INSPECTION)
    html = logged_in(client, owner).get(f"/models/{version.pk}/").content.decode()
    for expected in (
        "randomForest.formula, randomForest",
        "written by 4.2.2, read by 4.2.2",
        "randomForest 4.7-1.1",
        "setosa, versicolor",
        "<dd>1.2 s</dd>",
    ):
        assert expected in html
    # PostgreSQL's jsonb keeps no key order (inspect.R stores the payload as JSON text, which keeps it).
    assert "\n  &quot;Sepal.Length&quot;: 5.1" in html
    assert "\n  &quot;Species&quot;: &quot;setosa&quot;" in html
    assert "{&quot;predictions&quot;: [&quot;setosa&quot;]}" in html
    assert "hx-trigger" not in html.split('id="inspection"')[1].split(">")[0]


def test_model_page_polls_while_inspecting_and_stops_with_286_when_done(client: Client, owner: User) -> None:
    version = make_model_version(owner)
    client = logged_in(client, owner)
    page = client.get(f"/models/{version.pk}/").content.decode()
    assert 'hx-trigger="every 1s"' in page
    assert client.get(f"/models/{version.pk}/?fragment=inspection", headers=HTMX).status_code == 200

    ModelVersion.objects.filter(pk=version.pk).update(
        status=ModelVersion.Status.INVALID, status_reason="R package 'xgboost' is not installed"
    )
    final = client.get(f"/models/{version.pk}/?fragment=inspection", headers=HTMX)
    assert final.status_code == 286
    assert "R package &#x27;xgboost&#x27; is not installed" in final.content.decode()
    assert "hx-trigger" not in final.content.decode()


def test_other_users_model_version_is_404_and_staff_see_it(
    client: Client, owner: User, colleague: User, staff: User
) -> None:
    version = make_model_version(owner)
    assert logged_in(client, colleague).get(f"/models/{version.pk}/").status_code == 404
    assert logged_in(Client(), staff).get(f"/models/{version.pk}/").status_code == 200


def test_endpoints_list_polls_only_while_busy_and_sends_only_changed_rows(client: Client, owner: User) -> None:
    endpoint = deploying_endpoint(owner)
    make_endpoint(owner, "quiet", status=Endpoint.Status.LIVE)
    Endpoint.objects.update(updated_at=timezone.now() - timedelta(hours=1))
    client = logged_in(client, owner)
    page = client.get("/endpoints/").content.decode()
    assert "iris v1" in page
    poll = re.search(r'hx-get="(/endpoints/\?fragment=changes&amp;since=[^"]+)" hx-trigger="every 2s"', page)
    assert poll is not None
    poll_url = poll.group(1).replace("&amp;", "&")

    nothing_new = client.get(poll_url, headers=HTMX)
    assert nothing_new.status_code == 200
    assert "<tr" not in nothing_new.content.decode()

    finish(endpoint, Endpoint.Status.LIVE)
    done = client.get(poll_url, headers=HTMX)
    html = done.content.decode()
    assert done.status_code == 286
    assert f'<tr id="endpoint-row-{endpoint.pk}" hx-swap-oob="true">' in html
    assert "badge-live" in html
    assert "quiet" not in html
    assert "hx-trigger" not in html


def test_endpoints_list_is_paginated(client: Client, owner: User) -> None:
    Endpoint.objects.bulk_create(
        [Endpoint(owner=owner, name=f"ep-{i:03d}", status=Endpoint.Status.LIVE) for i in range(60)]
    )
    html = logged_in(client, owner).get("/endpoints/").content.decode()
    assert html.count('href="/endpoints/ep-') == 50
    assert "Page 1 of 2" in html


def test_endpoint_page_shows_steps_with_durations_and_polls_until_terminal(client: Client, owner: User) -> None:
    endpoint = deploying_endpoint(owner)
    client = logged_in(client, owner)
    html = client.get("/endpoints/iris/").content.decode()
    assert "prepare model directory" in html
    assert "1.5 s" in html
    assert 'hx-get="/endpoints/iris/?fragment=overview"' in html

    finish(endpoint, Endpoint.Status.FAILED, error="runtime never answered /ping")
    final = client.get("/endpoints/iris/?fragment=overview", headers=HTMX)
    assert final.status_code == 286
    assert "runtime never answered /ping" in final.content.decode()


def test_other_users_endpoint_is_404_on_every_route(client: Client, owner: User, colleague: User) -> None:
    deploying_endpoint(owner)
    client = logged_in(client, colleague)
    for path in ("/endpoints/iris/", "/endpoints/iris/?fragment=overview", "/endpoints/iris/logs/?after=0"):
        assert client.get(path, headers=HTMX).status_code == 404, path


def test_log_poll_returns_lines_after_the_cursor_and_advances_it(client: Client, owner: User) -> None:
    endpoint = deploying_endpoint(owner)
    first = LogLine.objects.create(endpoint=endpoint, source=LogLine.Source.PIPELINE, message="planning steps")
    second = LogLine.objects.create(endpoint=endpoint, source=LogLine.Source.RUNTIME, message="Rserve started")
    client = logged_in(client, owner)

    response = client.get(f"/endpoints/iris/logs/?after={first.id}", headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert "Rserve started" in html
    assert "planning steps" not in html
    assert 'hx-swap-oob="beforeend:#log-lines"' in html
    assert f"after={second.id}" in html

    idle = client.get(f"/endpoints/iris/logs/?after={second.id}", headers=HTMX).content.decode()
    assert "hx-swap-oob" not in idle
    assert 'hx-trigger="every 1s"' in idle


def test_log_poll_stops_with_286_once_nothing_is_in_progress(client: Client, owner: User) -> None:
    endpoint = deploying_endpoint(owner)
    finish(endpoint, Endpoint.Status.LIVE)
    line = LogLine.objects.create(endpoint=endpoint, source=LogLine.Source.PIPELINE, message="endpoint is live")
    response = logged_in(client, owner).get("/endpoints/iris/logs/?after=0", headers=HTMX)
    assert response.status_code == 286
    html = response.content.decode()
    assert "endpoint is live" in html
    assert "hx-trigger" not in html
    assert ">Resume</button>" in html
    assert f"after={line.id}" in html


def test_paused_log_panel_stops_polling_until_resumed(client: Client, owner: User) -> None:
    endpoint = deploying_endpoint(owner)
    LogLine.objects.create(endpoint=endpoint, source=LogLine.Source.PIPELINE, message="not yet shown")
    paused = logged_in(client, owner).get("/endpoints/iris/logs/?after=0&follow=0", headers=HTMX)
    html = paused.content.decode()
    assert paused.status_code == 200
    assert "hx-trigger" not in html
    assert "not yet shown" not in html
    assert ">Resume</button>" in html
    assert "Paused." in html


def test_log_page_shows_only_the_last_lines_and_starts_from_the_newest(client: Client, owner: User) -> None:
    endpoint = deploying_endpoint(owner)
    LogLine.objects.bulk_create(
        [LogLine(endpoint=endpoint, source=LogLine.Source.RUNTIME, message=f"line {i:04d}") for i in range(250)]
    )
    html = logged_in(client, owner).get("/endpoints/iris/").content.decode()
    assert "line 0249" in html
    assert "line 0049" not in html
    assert "line 0050" in html
    newest = LogLine.objects.filter(endpoint=endpoint).order_by("-id").first()
    assert newest is not None
    assert f"after={newest.id}" in html


def test_api_token_is_shown_once_works_and_can_be_revoked(client: Client, owner: User) -> None:
    client = logged_in(client, owner)
    html = client.post("/tokens/", {"name": "ci"}).content.decode()
    secret = re.search(r'id="new-token" type="text" readonly value="([^"]+)"', html)
    assert secret is not None
    assert api_token_authenticate(secret=secret.group(1)) is not None
    assert 'data-copy="#new-token"' in html

    listing = client.get("/tokens/").content.decode()
    assert secret.group(1) not in listing
    token = ApiToken.objects.get(user=owner)
    assert client.post(f"/tokens/{token.pk}/revoke/").status_code == 302
    assert api_token_authenticate(secret=secret.group(1)) is None


def test_other_users_cannot_revoke_a_token(client: Client, owner: User, colleague: User) -> None:
    logged_in(client, owner).post("/tokens/", {"name": "mine"})
    token = ApiToken.objects.get(user=owner)
    assert logged_in(Client(), colleague).post(f"/tokens/{token.pk}/revoke/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
