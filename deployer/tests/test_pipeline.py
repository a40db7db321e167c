"""End to end: the REST API, a real Celery worker, Redis and R runtimes (issue 5's
"done when"): create, live, invoke, update, roll back, public API, delete. The update under
concurrent traffic through gunicorn is test_update_under_load.py's."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from deployer.integrations.containers import runtimes
from deployer.models import Deployment, Endpoint, ExternalResource
from deployer.services import gateway
from deployer.services.tokens import api_token_create
from deployer.targets.local.paths import endpoint_dir
from deployer.tests.pipeline_support import iris_version, running_containers
from testsupport.r_models import expected, rows_csv
from testsupport.services import WebServer
from testsupport.waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("celery_worker", "fresh_gateway_routes", "no_runtime_outlives_the_test"),
]


def wait_endpoint(client: APIClient, name: str, status: str, *, timeout: float = 60) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/api/v1/endpoints/{name}").json()
        if body["status"] == status and (body["deployment"] or {}).get("status") in ("succeeded", "failed"):
            return body
        return None

    result: dict[str, Any] = wait_for(reached, timeout=timeout, what=f"{name} to be {status}")
    return result


def upload(client: APIClient, models: Path, version: str) -> int:
    """Upload through the intake API with a sample, and wait for the inspection (the worker's)."""
    with (models / f"{version}.rds").open("rb") as model:
        response = client.post(
            "/api/v1/models/",
            {
                "name": "iris",
                "file": model,
                "sample": SimpleUploadedFile("sample.csv", rows_csv(expected(models)["rows"]), "text/csv"),
            },
            format="multipart",
        )
    assert response.status_code == 201, response.json()
    model_id = int(response.json()["id"])

    def inspected() -> bool:
        status = client.get(f"/api/v1/models/{model_id}/").json()["status"]
        assert status != "invalid"
        return bool(status == "ready")

    wait_for(inspected, timeout=120, what=f"{version} to be inspected")
    return model_id


def predictions(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return list(json.loads(response.content)["predictions"])


def http_post(server: WebServer, path: str, body: bytes, content_type: str, **headers: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type, **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_model_goes_live_updates_rolls_back_and_is_deleted(
    owner: User, api_client_for: Callable[[User], APIClient], iris_models: Path, web_server: WebServer
) -> None:
    truth = expected(iris_models)
    client = api_client_for(owner)
    v1 = upload(client, iris_models, "v1")
    v2 = upload(client, iris_models, "v2")

    created = client.post(
        "/api/v1/endpoints/",
        {"name": "iris", "model": v1, "public": True, "options": {"throttle": {"rate": 0.001, "burst": 5}}},
        format="json",
    )
    assert created.status_code == 202, created.json()
    api_key = created.json()["api_key"]
    live = wait_endpoint(client, "iris", "live")
    assert live["model"]["version"] == 1
    assert [step["status"] for step in live["steps"]] == ["succeeded"] * 5 + ["skipped"]

    # CSV and JSON, compared with R's own predictions.
    invocations = "/api/v1/endpoints/iris/invocations"
    csv = client.post(invocations, rows_csv(truth["rows"]), content_type="text/csv")
    assert predictions(csv) == truth["v1"]
    assert float(csv.headers["X-Rdeploy-Runtime-Ms"]) > 0
    as_json = client.post(invocations, json.dumps(truth["rows"]), content_type="application/json")
    assert predictions(as_json) == truth["v1"]
    # The same over HTTP through the real web app (gunicorn serving config.wsgi), both routes.
    token = api_token_create(user=owner, name="http").secret
    over_http = [
        http_post(web_server, invocations, rows_csv(truth["rows"]), "text/csv", Authorization=f"Token {token}"),
        http_post(
            web_server,
            "/e/iris/invocations",
            json.dumps(truth["rows"]).encode(),
            "application/json",
            **{"x-api-key": api_key},
        ),
    ]
    for status, body in over_http:
        assert status == 200, body
        assert json.loads(body)["predictions"] == truth["v1"]
    assert http_post(web_server, "/e/iris/invocations", b"1", "text/csv", **{"x-api-key": "rdk_wrong"})[0] == 403

    # Blue/green update (under concurrent traffic through gunicorn: test_update_under_load.py).
    assert client.post("/api/v1/endpoints/iris/deployments", {"model": v2}, format="json").status_code == 202
    updated = wait_endpoint(client, "iris", "live")
    assert updated["model"]["version"] == 2
    assert updated["deployment"]["status"] == "succeeded"
    gateway._routes.clear()
    assert predictions(client.post(invocations, rows_csv(truth["rows"]), content_type="text/csv")) == truth["v2"]
    # Only the new runtime is left.
    containers_left = ExternalResource.objects.filter(
        endpoint__name="iris", kind=ExternalResource.Kind.CONTAINER, deleted_at__isnull=True
    )
    assert containers_left.count() == 1
    assert running_containers("iris") == [containers_left.get().identifier]

    # Rollback: back to v1.
    assert client.post("/api/v1/endpoints/iris/rollback").status_code == 202
    rolled_back = wait_endpoint(client, "iris", "live")
    assert rolled_back["model"]["version"] == 1
    assert rolled_back["deployment"]["kind"] == "rollback"
    gateway._routes.clear()
    assert predictions(client.post(invocations, rows_csv(truth["rows"]), content_type="text/csv")) == truth["v1"]

    # The public API: key, wrong key, throttle.
    public = Client()
    public_call = lambda key: public.post(  # noqa: E731
        "/e/iris/invocations", rows_csv(truth["rows"]), content_type="text/csv", HTTP_X_API_KEY=key
    )
    assert predictions(public_call(api_key)) == truth["v1"]
    assert public_call("rdk_wrong").status_code == 403
    # A burst of 5 refilled one token per 1000 s, two spent above: exact, however long
    # each prediction takes.
    statuses = [public_call(api_key).status_code for _ in range(8)]
    assert statuses == [200] * 3 + [429] * 5

    # Delete: the container is gone, its socket and files removed.
    runtime = Endpoint.objects.get(name="iris").runtime
    deleted = client.delete("/api/v1/endpoints/iris/")
    assert deleted.status_code == 202
    assert deleted.json()["status"] == "deleting"
    wait_endpoint(client, "iris", "deleted")
    assert runtimes.names(endpoint="iris") == []
    assert not Path(runtime["socket"]).exists()
    assert not endpoint_dir("iris").exists()
    assert not ExternalResource.objects.filter(endpoint__name="iris", deleted_at__isnull=True).exists()
    assert Deployment.objects.filter(endpoint__name="iris").exclude(status="succeeded").count() == 0
    assert public_call(api_key).status_code == 403


def test_a_broken_update_fails_with_the_runtime_log_and_the_old_version_keeps_serving(
    owner: User, api_client_for: Callable[[User], APIClient], iris_models: Path
) -> None:
    from deployer.tests.pipeline_support import broken_model

    truth = expected(iris_models)
    client = api_client_for(owner)
    v1 = iris_version(owner, iris_models, "v1")
    assert client.post("/api/v1/endpoints/", {"name": "sturdy", "model": v1.pk}, format="json").status_code == 202
    wait_endpoint(client, "sturdy", "live")

    broken = broken_model(owner, iris_models)
    assert client.post("/api/v1/endpoints/sturdy/deployments", {"model": broken.pk}, format="json").status_code == 202
    body = wait_endpoint(client, "sturdy", "live")

    assert body["deployment"]["status"] == "failed"
    assert body["model"]["version"] == 1
    assert "rdeployNoSuchPackage" in body["error"]
    failed_step = next(step for step in body["steps"] if step["status"] == "failed")
    assert failed_step["name"] == "wait_healthy"
    assert "last log lines" in failed_step["message"]
    invocations = "/api/v1/endpoints/sturdy/invocations"
    assert predictions(client.post(invocations, rows_csv(truth["rows"]), content_type="text/csv")) == truth["v1"]
    logs = client.get("/api/v1/endpoints/sturdy/logs?after=0").json()
    assert any("rdeployNoSuchPackage" in line["message"] and line["source"] == "runtime" for line in logs["lines"])


def test_the_demo_command_deploys_the_example_model_and_prints_a_working_curl_line() -> None:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("rdeploy_demo", stdout=out)
    printed = out.getvalue()
    assert "iris-demo is live: http://testserver/endpoints/iris-demo/" in printed
    key = printed.split("x-api-key: ", 1)[1].split("'", 1)[0]
    response = Client().post(
        "/e/iris-demo/invocations",
        "Sepal.Length,Sepal.Width,Petal.Length,Petal.Width\n5.1,3.5,1.4,0.2\n",
        content_type="text/csv",
        HTTP_X_API_KEY=key,
    )
    assert predictions(response) == ["setosa"]
    # A second start reuses the endpoint and its key.
    again = StringIO()
    call_command("rdeploy_demo", stdout=again)
    assert f"x-api-key: {key}" in again.getvalue()
