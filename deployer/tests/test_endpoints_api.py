"""The REST contract of /api/v1/endpoints/ (issue 5), from the owner's, a colleague's and
staff's side. No worker runs here: deployments are only recorded."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings
from rest_framework.test import APIClient

from deployer.api.endpoints import LogLineSerializer
from deployer.models import Deployment, Endpoint, LogLine, ModelVersion
from deployer.services.endpoints import endpoint_create
from deployer.services.gateway import MAX_BODY_BYTES
from deployer.services.tokens import api_token_create
from testsupport.factories import make_model_version

pytestmark = pytest.mark.django_db

ClientFor = Callable[[User], APIClient]


def ready(owner: User, name: str = "iris") -> ModelVersion:
    return make_model_version(owner, name=name, status=ModelVersion.Status.READY)


def test_creating_an_endpoint_answers_202_with_its_pending_steps(owner: User, api_client_for: ClientFor) -> None:
    model = ready(owner)
    response = api_client_for(owner).post("/api/v1/endpoints/", {"name": "iris-prod", "model": model.pk}, format="json")

    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["name"] == "iris-prod"
    assert body["target"] == "local"
    assert body["status"] == "pending"
    assert body["model"] == {"id": model.pk, "name": "iris", "version": 1}
    assert [step["name"] for step in body["steps"]] == [
        "prepare_model_dir",
        "start_runtime",
        "wait_healthy",
        "smoke_test",
        "switch_traffic",
        "stop_previous",
    ]
    assert {step["status"] for step in body["steps"]} == {"pending"}
    assert body["invoke_url"] == "http://testserver/api/v1/endpoints/iris-prod/invocations"
    assert body["public_url"] == ""
    assert body["error"] == ""
    assert "api_key" not in body


def test_a_public_endpoint_shows_its_key_once_and_stores_only_its_hash(owner: User, api_client_for: ClientFor) -> None:
    client = api_client_for(owner)
    body = client.post(
        "/api/v1/endpoints/", {"name": "open", "model": ready(owner).pk, "public": True}, format="json"
    ).json()

    key = body["api_key"]
    assert key.startswith("rdk_")
    assert body["public_url"] == "http://testserver/e/open/invocations"
    endpoint = Endpoint.objects.get(name="open")
    assert key not in str(Endpoint.objects.filter(pk=endpoint.pk).values().get())
    assert "api_key" not in client.get("/api/v1/endpoints/open").json()

    rotated = client.post("/api/v1/endpoints/open/rotate-key").json()["api_key"]
    assert rotated != key
    endpoint.refresh_from_db()
    assert endpoint.api_key_prefix == rotated[:12]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"name": "-x"}, "name"),
        ({"name": "ok", "target": "mainframe"}, "target"),
        ({"name": "ok", "options": {"colour": "blue"}}, "options"),
        ({"name": "ok", "options": {"workers": 0}}, "options"),
        ({"name": "ok", "options": {"throttle": {"rate": -1}}}, "options"),
    ],
)
def test_invalid_requests_are_400_naming_the_field(
    owner: User, api_client_for: ClientFor, payload: dict[str, object], field: str
) -> None:
    response = api_client_for(owner).post("/api/v1/endpoints/", {"model": ready(owner).pk, **payload}, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Endpoint.objects.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"memory_mb": 1024**2}, "'memory_mb' is at most 2048 MiB on this server (RDEPLOY_LOCAL_MAX_MEMORY_MB"),
        ({"memory_mb": 2049}, "'memory_mb' is at most 2048 MiB"),
        ({"workers": 64}, "'workers' is at most 3 on this server"),
        ({"workers": 4}, "(RDEPLOY_LOCAL_MAX_CPUS)"),
    ],
)
@override_settings(LOCAL_MAX_MEMORY_MB=2048, LOCAL_MAX_CPUS=3)
def test_local_resources_above_the_operators_caps_are_400_naming_the_cap(
    owner: User, api_client_for: ClientFor, options: dict[str, int], message: str
) -> None:
    client = api_client_for(owner)
    greedy = {"name": "greedy", "model": ready(owner).pk, "options": options}

    refused = client.post("/api/v1/endpoints/", greedy, format="json")

    assert refused.status_code == 400
    assert message in refused.json()["options"][0]
    assert not Endpoint.objects.exists()
    at_the_caps = {"name": "fair", "model": ready(owner).pk, "options": {"memory_mb": 2048, "workers": 3}}
    assert client.post("/api/v1/endpoints/", at_the_caps, format="json").status_code == 202


@override_settings(LOCAL_MAX_MEMORY_MB=1024, LOCAL_MAX_CPUS=1)
def test_the_default_resources_shrink_to_caps_below_them(owner: User, api_client_for: ClientFor) -> None:
    response = api_client_for(owner).post("/api/v1/endpoints/", {"name": "small", "model": ready(owner).pk})

    assert response.status_code == 202, response.json()
    options = Endpoint.objects.get(name="small").options
    assert (options["memory_mb"], options["workers"]) == (1024, 1)


def test_a_model_that_is_not_ready_cannot_be_deployed(owner: User, api_client_for: ClientFor) -> None:
    model = make_model_version(owner, status=ModelVersion.Status.INVALID, status_reason="predict() failed")
    response = api_client_for(owner).post("/api/v1/endpoints/", {"name": "x", "model": model.pk}, format="json")
    assert response.status_code == 400
    assert "not ready: predict() failed" in response.json()["model"][0]


def test_names_are_unique_in_the_installation(owner: User, colleague: User, api_client_for: ClientFor) -> None:
    endpoint_create(owner=owner, name="taken", model_version=ready(owner))
    response = api_client_for(colleague).post(
        "/api/v1/endpoints/", {"name": "taken", "model": ready(colleague).pk}, format="json"
    )
    assert response.status_code == 400
    assert "already exists" in response.json()["name"][0]


def test_another_users_model_cannot_be_deployed(owner: User, colleague: User, api_client_for: ClientFor) -> None:
    response = api_client_for(colleague).post(
        "/api/v1/endpoints/", {"name": "theirs", "model": ready(owner).pk}, format="json"
    )
    assert response.status_code == 400
    assert "model" in response.json()


def test_an_update_while_a_rollout_runs_is_a_409(owner: User, api_client_for: ClientFor) -> None:
    endpoint_create(owner=owner, name="busy", model_version=ready(owner))
    response = api_client_for(owner).post(
        "/api/v1/endpoints/busy/deployments", {"model": ready(owner).pk}, format="json"
    )
    assert response.status_code == 409
    assert "in progress" in response.json()["detail"]


def test_rollback_without_a_previous_version_is_a_409(owner: User, api_client_for: ClientFor) -> None:
    issued = endpoint_create(owner=owner, name="fresh", model_version=ready(owner))
    Deployment.objects.filter(endpoint=issued.endpoint).update(status=Deployment.Status.SUCCEEDED)
    Endpoint.objects.filter(pk=issued.endpoint.pk).update(status=Endpoint.Status.LIVE)
    response = api_client_for(owner).post("/api/v1/endpoints/fresh/rollback")
    assert response.status_code == 409
    assert "no previous version" in response.json()["detail"]


def test_deleting_answers_202_and_the_endpoint_is_deleting(owner: User, api_client_for: ClientFor) -> None:
    endpoint_create(owner=owner, name="bye", model_version=ready(owner))
    response = api_client_for(owner).delete("/api/v1/endpoints/bye/")
    assert response.status_code == 202
    assert response.json()["status"] == "deleting"
    assert [step["name"] for step in response.json()["steps"]] == ["stop_runtime", "remove_files"]
    assert Deployment.objects.filter(endpoint__name="bye", kind=Deployment.Kind.DELETE).count() == 1


def test_logs_are_tailed_by_cursor(owner: User, api_client_for: ClientFor) -> None:
    issued = endpoint_create(owner=owner, name="chatty", model_version=ready(owner))
    client = api_client_for(owner)
    first = client.get("/api/v1/endpoints/chatty/logs?after=0").json()
    assert first["lines"][0]["message"].startswith("Create of iris v1 started")
    assert first["next"] == first["lines"][-1]["id"]
    assert client.get(f"/api/v1/endpoints/chatty/logs?after={first['next']}").json() == {
        "lines": [],
        "next": first["next"],
    }
    LogLine.objects.create(endpoint=issued.endpoint, source=LogLine.Source.RUNTIME, message="hello from R")
    tail = client.get(f"/api/v1/endpoints/chatty/logs?after={first['next']}").json()
    assert [line["message"] for line in tail["lines"]] == ["hello from R"]
    assert client.get("/api/v1/endpoints/chatty/logs?after=soon").status_code == 400


def test_a_log_page_is_what_the_log_line_serializer_gives_each_line(owner: User, api_client_for: ClientFor) -> None:
    """The page is built from rows without a serializer per line; the schema still names
    LogLineSerializer, so both must give the same JSON (a line of a deployment and one
    without, microseconds and a non-ASCII message included)."""
    issued = endpoint_create(owner=owner, name="chatty", model_version=ready(owner))
    LogLine.objects.create(
        endpoint=issued.endpoint, source=LogLine.Source.RUNTIME, level=LogLine.Level.WARNING, message="Größe \u2603"
    )

    page = api_client_for(owner).get("/api/v1/endpoints/chatty/logs?after=0").json()

    lines = LogLine.objects.filter(endpoint=issued.endpoint).order_by("id")
    assert page["lines"] == json.loads(json.dumps(LogLineSerializer(lines, many=True).data))
    assert {line["deployment"] is None for line in page["lines"]} == {True, False}


def test_invoking_an_endpoint_that_is_not_live_is_a_503(owner: User, api_client_for: ClientFor) -> None:
    endpoint_create(owner=owner, name="later", model_version=ready(owner))
    response = api_client_for(owner).post("/api/v1/endpoints/later/invocations", b"x\n1\n", content_type="text/csv")
    assert response.status_code == 503
    assert "not serving" in response.json()["message"]


def test_invoking_needs_authentication(owner: User) -> None:
    endpoint_create(owner=owner, name="closed", model_version=ready(owner))
    client = APIClient()
    assert (
        client.post("/api/v1/endpoints/closed/invocations", b"{}", content_type="application/json").status_code == 401
    )
    client.credentials(HTTP_AUTHORIZATION="Token rdp_wrong")
    assert (
        client.post("/api/v1/endpoints/closed/invocations", b"{}", content_type="application/json").status_code == 401
    )


ROUTES: list[tuple[str, str, object]] = [
    ("get", "/api/v1/endpoints/private/", None),
    ("get", "/api/v1/endpoints/private", None),
    ("post", "/api/v1/endpoints/private/invocations", {}),
    ("get", "/api/v1/endpoints/private/logs?after=0", None),
    ("post", "/api/v1/endpoints/private/deployments", "model"),
    ("post", "/api/v1/endpoints/private/rollback", None),
    ("post", "/api/v1/endpoints/private/rotate-key", None),
    ("delete", "/api/v1/endpoints/private/", None),
]


@pytest.mark.parametrize(("method", "path", "payload"), ROUTES)
def test_another_user_gets_404_on_every_route(
    owner: User, colleague: User, api_client_for: ClientFor, method: str, path: str, payload: object
) -> None:
    endpoint_create(owner=owner, name="private", model_version=ready(owner), public=True)
    data = {"model": ready(colleague).pk} if payload == "model" else payload
    response = getattr(api_client_for(colleague), method)(path, data, format="json")
    assert response.status_code == 404
    assert "private" not in response.content.decode()
    assert Endpoint.objects.get(name="private").status == Endpoint.Status.PENDING


def test_lists_show_own_endpoints_and_staff_sees_all(
    owner: User, colleague: User, staff: User, api_client_for: ClientFor
) -> None:
    endpoint_create(owner=owner, name="mine", model_version=ready(owner))
    endpoint_create(owner=colleague, name="theirs", model_version=ready(colleague))

    def names(user: User) -> set[str]:
        return {row["name"] for row in api_client_for(user).get("/api/v1/endpoints/").json()["results"]}

    assert names(owner) == {"mine"}
    assert names(colleague) == {"theirs"}
    assert names(staff) == {"mine", "theirs"}
    assert api_client_for(staff).get("/api/v1/endpoints/mine/").status_code == 200


def test_a_browser_session_must_send_the_csrf_token_to_invoke(owner: User) -> None:
    endpoint_create(owner=owner, name="session", model_version=ready(owner))
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)

    refused = browser.post("/api/v1/endpoints/session/invocations", b"x\n1\n", content_type="text/csv")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]

    token = "a" * 32
    browser.cookies[settings.CSRF_COOKIE_NAME] = token
    allowed = browser.post(
        "/api/v1/endpoints/session/invocations", b"x\n1\n", content_type="text/csv", HTTP_X_CSRFTOKEN=token
    )
    assert allowed.status_code == 503  # past authentication: the endpoint is not live yet
    with_token = APIClient(enforce_csrf_checks=True)
    with_token.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=owner).secret}")
    assert (
        with_token.post("/api/v1/endpoints/session/invocations", b"x\n1\n", content_type="text/csv").status_code == 503
    )


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1])
def test_a_body_above_the_limit_is_a_json_413_before_it_is_read(
    owner: User, api_client_for: ClientFor, size: int
) -> None:
    endpoint_create(owner=owner, name="small", model_version=ready(owner))
    response = api_client_for(owner).post("/api/v1/endpoints/small/invocations", b"x" * size, content_type="text/csv")
    assert response.status_code == 413
    assert "larger than" in response.json()["message"]
