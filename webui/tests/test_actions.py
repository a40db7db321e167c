"""Dashboard forms that change things: deploy, invoke, update, roll back, delete, rotate key."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings

from deployer.models import Deployment, Endpoint, LogLine, ModelVersion
from deployer.services.tokens import hash_secret
from testsupport.factories import make_endpoint, make_model_version
from webui.presentation import invocation_chart
from webui.tests.test_pages import HTMX, INSPECTION, deploying_endpoint, logged_in


def ready_version(owner: User, name: str = "iris") -> ModelVersion:
    return make_model_version(owner, name, status=ModelVersion.Status.READY, inspection=INSPECTION)


def live_endpoint(owner: User, name: str = "iris", **fields: object) -> Endpoint:
    version = ready_version(owner)
    endpoint = make_endpoint(owner, name, status=Endpoint.Status.LIVE, model_version=version, **fields)
    deployment = Deployment.objects.create(
        endpoint=endpoint, model_version=version, kind=Deployment.Kind.CREATE, status=Deployment.Status.SUCCEEDED
    )
    Endpoint.objects.filter(pk=endpoint.pk).update(current_deployment=deployment)
    endpoint.refresh_from_db()
    return endpoint


def test_ready_model_page_offers_a_deploy_form_with_labelled_fields(client: Client, owner: User) -> None:
    version = ready_version(owner)
    html = logged_in(client, owner).get(f"/models/{version.pk}/").content.decode()
    for label in ("Endpoint name", "Target", "Public API"):
        assert f">{label}</label>" in html
    assert ">Deploy</button>" in html
    assert '<option value="local" selected>' in html


def test_deploy_form_creates_a_local_endpoint_and_opens_its_page(client: Client, owner: User) -> None:
    version = ready_version(owner)
    response = logged_in(client, owner).post(
        f"/models/{version.pk}/deploy/", {"name": "iris-prod", "target": "local", "options": ""}
    )
    assert response.status_code == 302
    assert response["Location"] == "/endpoints/iris-prod/"
    endpoint = Endpoint.objects.get(name="iris-prod")
    assert endpoint.owner == owner
    assert endpoint.status == Endpoint.Status.PENDING
    assert not endpoint.public


def test_public_deploy_shows_the_api_key_once(client: Client, owner: User) -> None:
    version = ready_version(owner)
    html = (
        logged_in(client, owner)
        .post(f"/models/{version.pk}/deploy/", {"name": "iris-public", "target": "local", "public": "on"})
        .content.decode()
    )
    key = re.search(r'id="api-key" type="text" readonly value="([^"]+)"', html)
    assert key is not None
    endpoint = Endpoint.objects.get(name="iris-public")
    assert endpoint.api_key_hash == hash_secret(key.group(1))
    assert key.group(1) not in client.get("/endpoints/iris-public/").content.decode()


def test_deploy_form_shows_the_services_refusals_next_to_the_fields(client: Client, owner: User) -> None:
    version = ready_version(owner)
    client = logged_in(client, owner)
    make_endpoint(owner, "taken")
    taken = client.post(f"/models/{version.pk}/deploy/", {"name": "taken", "target": "local"})
    assert taken.status_code == 400
    assert "An endpoint named &#x27;taken&#x27; already exists." in taken.content.decode()

    bad_options = client.post(
        f"/models/{version.pk}/deploy/", {"name": "fresh", "target": "local", "options": '{"gpus": 2}'}
    )
    assert bad_options.status_code == 400
    assert "Unknown option(s) for the local target: gpus." in bad_options.content.decode()
    assert not Endpoint.objects.filter(name="fresh").exists()


def test_other_users_cannot_deploy_a_model_they_cannot_see(client: Client, owner: User, colleague: User) -> None:
    version = ready_version(owner)
    response = logged_in(client, colleague).post(f"/models/{version.pk}/deploy/", {"name": "stolen"})
    assert response.status_code == 404
    assert not Endpoint.objects.filter(name="stolen").exists()


def test_update_starts_a_rollout_of_another_version(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner)
    second = ready_version(owner)
    client = logged_in(client, owner)
    html = client.get("/endpoints/iris/").content.decode()
    assert f'<option value="{second.pk}">iris v2</option>' in html
    response = client.post("/endpoints/iris/update/", {"model_version": second.pk})
    assert response.status_code == 302
    rollout = Deployment.objects.filter(endpoint=endpoint).order_by("-id").first()
    assert rollout is not None
    assert (rollout.kind, rollout.model_version) == (Deployment.Kind.UPDATE, second)
    assert "Updating iris to iris v2" in client.get("/endpoints/iris/").content.decode()


def test_update_to_another_users_version_is_404(client: Client, owner: User, colleague: User) -> None:
    live_endpoint(owner)
    theirs = ready_version(colleague, "theirs")
    assert logged_in(client, owner).post("/endpoints/iris/update/", {"model_version": theirs.pk}).status_code == 404


def test_roll_back_is_refused_with_a_message_when_there_is_nothing_to_go_back_to(client: Client, owner: User) -> None:
    live_endpoint(owner)
    client = logged_in(client, owner)
    html = client.get("/endpoints/iris/").content.decode()
    assert "nothing to roll back to yet" in html
    response = client.post("/endpoints/iris/rollback/", follow=True)
    assert "has no previous version to roll back to" in response.content.decode()


def test_roll_back_returns_to_the_previous_version(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner)
    first = endpoint.model_version
    second = ready_version(owner)
    Endpoint.objects.filter(pk=endpoint.pk).update(model_version=second, previous_model_version=first)
    client = logged_in(client, owner)
    assert "to iris v1" in client.get("/endpoints/iris/").content.decode()
    client.post("/endpoints/iris/rollback/")
    rollout = Deployment.objects.filter(endpoint=endpoint).order_by("-id").first()
    assert rollout is not None
    assert (rollout.kind, rollout.model_version) == (Deployment.Kind.ROLLBACK, first)


def test_delete_asks_for_confirmation_before_deleting(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner)
    client = logged_in(client, owner)
    confirm = client.get("/endpoints/iris/delete/").content.decode()
    assert "Delete endpoint iris?" in confirm
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.LIVE

    assert client.post("/endpoints/iris/delete/").status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.DELETING


def test_other_users_cannot_update_roll_back_delete_or_invoke(client: Client, owner: User, colleague: User) -> None:
    endpoint = live_endpoint(owner)
    client = logged_in(client, colleague)
    for path in ("update", "rollback", "delete", "invoke", "rotate-key"):
        assert client.post(f"/endpoints/iris/{path}/", {"model_version": 1, "payload": "x"}).status_code == 404, path
    endpoint.refresh_from_db()
    assert endpoint.status == Endpoint.Status.LIVE


def test_invoke_form_shows_status_latency_and_body_of_the_gateways_answer(client: Client, owner: User) -> None:
    deploying_endpoint(owner)
    response = logged_in(client, owner).post(
        "/endpoints/iris/invoke/", {"payload": "x\n1\n", "content_type": "text/csv"}, headers=HTMX
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert 'aria-label="Response"' in html
    assert "Status <strong>503</strong>" in html
    assert "Latency" in html
    assert "is not serving (status deploying)" in html


def test_rotating_the_key_shows_the_new_one_once(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner, public=True, api_key_hash="old", api_key_prefix="rdk_old")
    html = logged_in(client, owner).post("/endpoints/iris/rotate-key/").content.decode()
    key = re.search(r'id="api-key" type="text" readonly value="([^"]+)"', html)
    assert key is not None
    endpoint.refresh_from_db()
    assert endpoint.api_key_hash == hash_secret(key.group(1))


def test_chart_counts_invocations_and_mean_latency_per_minute_from_access_log_lines(owner: User) -> None:
    endpoint = live_endpoint(owner)
    # A fixed clock: with the real one, "5 seconds ago" falls in the previous minute's bucket
    # during the first 5 seconds of a minute.
    now = datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC)
    access = "25/Nov/2026:10:00:01.123 POST /invocations 200 4 ms (queued 0 ms)"
    lines = [
        LogLine(endpoint=endpoint, source="runtime", message=access),
        LogLine(endpoint=endpoint, source="runtime", message="25/Nov/2026:10:00:02.123 POST /invocations 500 8 ms"),
        LogLine(endpoint=endpoint, source="runtime", message="25/Nov/2026:10:00:02.500 GET /ping 200 0 ms"),
        LogLine(endpoint=endpoint, source="runtime", message="model loaded in 0.4 s"),
    ]
    for line in lines:
        line.created_at = now - timedelta(seconds=5)
    old = LogLine(endpoint=endpoint, source="runtime", message="x POST /invocations 200 900 ms")
    old.created_at = now - timedelta(hours=2)
    chart = invocation_chart([(line.created_at, line.message) for line in (old, *lines)], now=now)
    assert chart.total == 2
    last = chart.buckets[-1]
    assert (last.count, last.errors, last.mean_latency) == (2, 1, 6.0)
    assert chart.latency_points


def test_chart_fragment_renders_for_the_owner(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner)
    LogLine.objects.create(endpoint=endpoint, source="runtime", message="t POST /invocations 200 3 ms")
    html = logged_in(client, owner).get("/endpoints/iris/?fragment=chart", headers=HTMX).content.decode()
    assert "1 invocation in the last 30 minutes" in html
    assert 'role="img"' in html


def test_upload_refusal_is_shown_next_to_the_model_file_field_without_javascript(client: Client, owner: User) -> None:
    junk = SimpleUploadedFile("notes.rds", b"these are not the bytes of an R model\n" * 100)
    response = logged_in(client, owner).post("/models/upload/", {"name": "notes", "file": junk})
    assert response.status_code == 400
    html = response.content.decode()
    error = re.search(r'<span id="file-error" class="error" role="alert">([^<]+)</span>', html)
    assert error is not None
    assert error.group(1).strip()
    assert 'id="id_file" name="file" type="file" required accept=".rds,.tar.gz,.tgz,.zip" aria-invalid="true"' in html
    assert not ModelVersion.objects.filter(name="notes").exists()


@override_settings(MAX_UPLOAD_BYTES=300_000)
def test_an_upload_above_the_limit_is_refused_while_it_streams_with_413(client: Client, owner: User) -> None:
    big = SimpleUploadedFile("big.rds", b"x" * 1_000_000)
    response = logged_in(client, owner).post("/models/upload/", {"name": "big", "file": big})
    assert response.status_code == 413
    assert "larger than the upload limit of 300000 bytes" in response.content.decode()
    assert not ModelVersion.objects.filter(name="big").exists()


def test_the_upload_form_still_needs_a_csrf_token(owner: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    junk = SimpleUploadedFile("notes.rds", b"not a model")
    assert client.post("/models/upload/", {"name": "notes", "file": junk}).status_code == 403


def test_upload_refusal_over_htmx_returns_only_the_fields_with_the_message(client: Client, owner: User) -> None:
    junk = SimpleUploadedFile("notes.rds", b"not a model" * 10)
    response = logged_in(client, owner).post(
        "/models/upload/", {"name": "Bad Name", "file": junk, "packages": ""}, headers=HTMX
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="upload-fields"')
    assert 'id="name-error"' in html


def test_upload_refusal_is_shown_on_the_field_the_service_names(client: Client, owner: User) -> None:
    # The field comes from the refusal (exc.field), not from its words: this one is about
    # the packages although the file is called sample.rds.
    junk = SimpleUploadedFile("sample.rds", b"not a model" * 10)
    response = logged_in(client, owner).post(
        "/models/upload/", {"name": "iris", "file": junk, "packages": "ok, not a name!"}, headers=HTMX
    )
    html = response.content.decode()
    assert 'id="packages-error"' in html
    assert "is not a valid R package name" in html
    assert 'id="file-error"' not in html
    assert 'id="sample-error"' not in html


def test_sagemaker_endpoints_get_a_boto3_snippet_with_their_sagemaker_name(client: Client, owner: User) -> None:
    live_endpoint(
        owner,
        target=Endpoint.Target.SAGEMAKER,
        runtime={"endpoint_name": "rdeploy-iris", "region": "eu-west-1"},
    )
    html = logged_in(client, owner).get("/endpoints/iris/").content.decode()
    assert "Python (boto3 sagemaker-runtime)" in html
    assert "EndpointName=&#x27;rdeploy-iris&#x27;" in html
    assert "region_name=&#x27;eu-west-1&#x27;" in html


def test_local_endpoints_offer_curl_r_and_python_snippets_only(client: Client, owner: User) -> None:
    live_endpoint(owner, invoke_url="http://testserver/api/v1/endpoints/iris/invocations")
    html = logged_in(client, owner).get("/endpoints/iris/").content.decode()
    for label in ("curl", "R (rdeploy package)", "R (httr2)", "Python (requests)"):
        assert f"<span>{label}</span>" in html
    assert "rdeploy_connect(&quot;http://testserver&quot;" in html
    assert "predict(rdeploy_endpoint(&quot;iris&quot;), newdata)" in html
    assert "boto3" not in html
    assert "curl -sS -X POST &#x27;http://testserver/api/v1/endpoints/iris/invocations&#x27;" in html


def test_sagemaker_options_are_checked_by_the_target_and_shown_on_the_form(client: Client, owner: User) -> None:
    version = ready_version(owner)
    response = logged_in(client, owner).post(
        f"/models/{version.pk}/deploy/",
        {"name": "iris-sm", "target": "sagemaker", "options": '{"instance_type": "m5.large"}'},
    )
    assert response.status_code == 400
    assert "instance_type must be a SageMaker instance type" in response.content.decode()
    assert not Endpoint.objects.filter(name="iris-sm").exists()


def test_options_that_are_not_a_json_object_are_refused_before_the_service(client: Client, owner: User) -> None:
    version = ready_version(owner)
    response = logged_in(client, owner).post(
        f"/models/{version.pk}/deploy/", {"name": "iris-x", "target": "local", "options": "[1, 2]"}
    )
    assert response.status_code == 400
    assert "Options must be a JSON object" in response.content.decode()


def test_invoke_without_javascript_renders_the_whole_page_with_the_response(client: Client, owner: User) -> None:
    deploying_endpoint(owner)
    response = logged_in(client, owner).post(
        "/endpoints/iris/invoke/", {"payload": "x\n1\n", "content_type": "text/csv"}
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html
    assert "Status <strong>503</strong>" in html
    assert ">x\n1\n</textarea>" in html


def test_stop_and_start_buttons_stop_a_live_endpoint_and_start_a_stopped_one(client: Client, owner: User) -> None:
    endpoint = live_endpoint(owner)
    client = logged_in(client, owner)
    page = client.get("/endpoints/iris/").content.decode()
    assert re.search(r'<button type="submit" class="secondary" aria-describedby="stop-help">Stop</button>', page)

    response = client.post("/endpoints/iris/stop/", follow=True)
    assert "Stopping iris" in response.content.decode()
    stop = Deployment.objects.get(endpoint=endpoint, kind=Deployment.Kind.STOP)
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.STOPPING

    Deployment.objects.filter(pk=stop.pk).update(status=Deployment.Status.SUCCEEDED)
    Endpoint.objects.filter(pk=endpoint.pk).update(status=Endpoint.Status.STOPPED)
    page = client.get("/endpoints/iris/").content.decode()
    assert "badge-stopped" in page
    assert ">Start</button>" in page
    assert (
        "is stopped; start it before changing its model"
        in client.post("/endpoints/iris/rollback/", follow=True).content.decode()
    )

    client.post("/endpoints/iris/start/")
    assert Deployment.objects.filter(endpoint=endpoint).order_by("-id").first().kind == Deployment.Kind.START  # type: ignore[union-attr]
    assert Endpoint.objects.get(pk=endpoint.pk).status == Endpoint.Status.STARTING
    again = client.post("/endpoints/iris/start/", follow=True).content.decode()
    assert "has a deployment in progress" in again


def test_other_users_cannot_stop_or_start(client: Client, owner: User, colleague: User) -> None:
    endpoint = live_endpoint(owner)
    client = logged_in(client, colleague)
    for path in ("stop", "start"):
        assert client.post(f"/endpoints/iris/{path}/").status_code == 404, path
    assert not Deployment.objects.filter(endpoint=endpoint, kind__in=[Deployment.Kind.STOP, Deployment.Kind.START])
