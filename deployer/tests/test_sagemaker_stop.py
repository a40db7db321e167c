"""Stopping and starting a SageMaker endpoint (issue 14) on moto: stop deletes only the
billed endpoint (and its scalable target); start recreates it from the kept config, with
no build, no upload and the same API key. The public API's Lambda, run against moto
with the environment rdeploy gave it, answers a stopped endpoint as rdeploy's gateway does."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from deployer.integrations.aws.client import aws_client
from deployer.models import Deployment, Endpoint, ExternalResource
from deployer.services import gateway, pipeline
from deployer.services.endpoints import endpoint_start, endpoint_stop
from deployer.targets.sagemaker.names import rollout_name
from deployer.targets.sagemaker.public_api import HANDLER_FILE
from deployer.tests.sagemaker_support import (
    ONE_PUBLIC_ENDPOINT,
    builds_started,
    counts,
    create_public,
    drive,
    latest,
    named,
)
from deployer.tests.test_sagemaker_faults import run_with_a_kill_at_every_call
from testsupport.moto import MotoServer
from testsupport.sagemaker_runtime import endpoint_checking_runtime, load_handler

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fresh_gateway_routes")]

AUTOSCALING = {"min": 1, "max": 3, "target_invocations": 50}


def call_public(key: str) -> Any:
    gateway._routes.clear()
    return Client().post(
        "/e/iris-sm/invocations", data=b'[{"Sepal.Length": 5.1}]', content_type="application/json", HTTP_X_API_KEY=key
    )


def test_stop_deletes_only_the_endpoint_and_start_recreates_it_from_the_kept_config_without_a_build(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    body = create_public(owner, api_client_for, autoscaling=AUTOSCALING)
    create = drive(latest("iris-sm"))
    assert create.status == Deployment.Status.SUCCEEDED, create.error
    live = {**ONE_PUBLIC_ENDPOINT, "scaling": 1}
    assert counts() == live
    client = api_client_for(owner)

    assert client.post("/api/v1/endpoints/iris-sm/stop").status_code == 202
    stop = drive(latest("iris-sm"))

    assert stop.status == Deployment.Status.SUCCEEDED, stop.error
    assert [step.name for step in stop.steps.all()] == ["remove_autoscaling", "remove_endpoint"]
    assert Endpoint.objects.get(name="iris-sm").status == Endpoint.Status.STOPPED
    # Only the billed part is gone: model, config, model data, Lambda, API and key stay.
    assert counts() == {**live, "endpoints": 0, "scaling": 0}
    stopped = call_public(body["api_key"])
    assert stopped.status_code == 503
    assert stopped.json()["reason"] == "endpoint is stopped"
    assert int(stopped["Retry-After"]) > 0

    assert client.post("/api/v1/endpoints/iris-sm/start").status_code == 202
    start = drive(latest("iris-sm"))

    assert start.status == Deployment.Status.SUCCEEDED, start.error
    assert [step.name for step in start.steps.all()] == [
        "recreate_endpoint",
        "wait_restarted",
        "autoscaling",
        "switch_traffic",
    ]
    endpoint = Endpoint.objects.get(name="iris-sm")
    assert endpoint.status == Endpoint.Status.LIVE
    assert endpoint.runtime["endpoint_name"] == named("iris-sm")
    # Nothing built or uploaded again: one build, one S3 object, one model, one config, the
    # create's, which the recreated endpoint uses.
    assert builds_started() == 1
    assert counts() == live
    described = aws_client("sagemaker").describe_endpoint(EndpointName=named("iris-sm"))
    assert described["EndpointConfigName"] == rollout_name(create)
    assert not {"upload_model_data", "build_image"} & set(start.steps.values_list("name", flat=True))
    assert ExternalResource.objects.live().filter(kind=ExternalResource.Kind.SAGEMAKER_ENDPOINT).count() == 1
    # The key returned at creation still works, here and in the Lambda authorizer.
    aws.queue_endpoint_results({"Body": '["setosa"]', "ContentType": "application/json"})
    answered = call_public(body["api_key"])
    assert answered.status_code == 200, answered.content
    assert json.loads(answered.content) == ["setosa"]
    function = aws_client("lambda").get_function_configuration(FunctionName=named("iris-sm"))
    assert function["Environment"]["Variables"]["RDEPLOY_API_KEY_SHA256"] == endpoint.api_key_hash


def deployed_lambda(function: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The public API's handler as Lambda would run it: the deployed function's environment
    (read back from moto) and the code rdeploy zips, loaded fresh."""
    variables = aws_client("lambda").get_function_configuration(FunctionName=function)["Environment"]["Variables"]
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return load_handler(HANDLER_FILE)


def invoke_lambda(handler: ModuleType) -> dict[str, Any]:
    event = {
        "httpMethod": "POST",
        "path": "/invocations",
        "headers": {"Content-Type": "application/json"},
        "body": '[{"Sepal.Length": 5.1}]',
        "isBase64Encoded": False,
    }
    return dict(handler.handler(event, None))


def test_the_public_apis_lambda_answers_503_while_the_endpoint_is_stopped_and_200_after_start(
    aws: MotoServer, owner: User, api_client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create_public(owner, api_client_for)["api_key"]
    assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
    client = api_client_for(owner)
    with endpoint_checking_runtime(aws.url) as runtime:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", runtime.url)
        handler = deployed_lambda(named("iris-sm"), monkeypatch)
        aws.queue_endpoint_results({"Body": '["setosa"]', "ContentType": "application/json"})
        assert invoke_lambda(handler)["statusCode"] == 200

        client.post("/api/v1/endpoints/iris-sm/stop")
        assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
        stopped = invoke_lambda(handler)
        # What rdeploy's own route answers for the same stopped endpoint, word for word.
        gateway_answer = call_public(key)

        client.post("/api/v1/endpoints/iris-sm/start")
        assert drive(latest("iris-sm")).status == Deployment.Status.SUCCEEDED
        started = invoke_lambda(handler)

    assert runtime.not_found == 1
    assert stopped["statusCode"] == 503
    assert stopped["headers"]["Retry-After"] == "60"
    assert json.loads(stopped["body"]) == {
        "message": "Endpoint iris-sm is stopped; its owner can start it.",
        "reason": "endpoint is stopped",
    }
    assert (gateway_answer.status_code, gateway_answer.json()) == (503, json.loads(stopped["body"]))
    assert gateway_answer["Retry-After"] == stopped["headers"]["Retry-After"]
    assert started["statusCode"] == 200
    assert json.loads(started["body"]) == ["setosa"]


def test_a_stopped_sagemaker_endpoint_can_be_deleted_and_everything_goes(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for)
    drive(latest("iris-sm"))
    client = api_client_for(owner)
    client.post("/api/v1/endpoints/iris-sm/stop")
    drive(latest("iris-sm"))

    assert client.delete("/api/v1/endpoints/iris-sm").status_code == 202
    delete = drive(latest("iris-sm"))

    assert delete.status == Deployment.Status.SUCCEEDED, delete.error
    assert Endpoint.objects.get(name="iris-sm").status == Endpoint.Status.DELETED
    assert {kind: count for kind, count in counts().items() if count} == {}


def test_a_failed_start_deletes_the_endpoint_it_recreated_and_leaves_the_endpoint_stopped(
    aws: MotoServer, owner: User, api_client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_public(owner, api_client_for)
    drive(latest("iris-sm"))
    client = api_client_for(owner)
    client.post("/api/v1/endpoints/iris-sm/stop")
    drive(latest("iris-sm"))
    client.post("/api/v1/endpoints/iris-sm/start")
    # One step per task, so the test acts between two steps.
    monkeypatch.setattr(pipeline, "budget", lambda: 0.0)
    start = drive(latest("iris-sm"), until_step="recreate_endpoint")
    assert counts()["endpoints"] == 1
    # The kept config is gone before the endpoint comes up: the start cannot succeed.
    ExternalResource.objects.filter(kind=ExternalResource.Kind.SAGEMAKER_ENDPOINT_CONFIG).update(
        deleted_at=start.created_at
    )

    start = drive(start)

    assert start.status == Deployment.Status.FAILED
    assert "endpoint config this endpoint served from is gone" in start.error
    endpoint = Endpoint.objects.get(name="iris-sm")
    assert endpoint.status == Endpoint.Status.STOPPED
    assert endpoint.error.startswith("Starting failed: ")
    # Nothing billed is left running.
    assert counts()["endpoints"] == 0
    assert not ExternalResource.objects.live().filter(kind=ExternalResource.Kind.SAGEMAKER_ENDPOINT).exists()


def test_a_worker_killed_at_every_aws_call_of_stop_and_start_leaves_one_endpoint_and_nothing_extra(
    aws: MotoServer, owner: User, api_client_for: Any
) -> None:
    create_public(owner, api_client_for, autoscaling=AUTOSCALING)
    drive(latest("iris-sm"))
    live = {**ONE_PUBLIC_ENDPOINT, "scaling": 1}
    endpoint = Endpoint.objects.get(name="iris-sm")

    stop = endpoint_stop(endpoint=endpoint)
    assert run_with_a_kill_at_every_call(stop) > 0
    assert drive(stop).status == Deployment.Status.SUCCEEDED, stop.error
    assert counts() == {**live, "endpoints": 0, "scaling": 0}

    start = endpoint_start(endpoint=endpoint)
    created: list[str] = []
    sagemaker = aws_client("sagemaker")
    sagemaker.meta.events.register(
        "after-call.sagemaker.CreateEndpoint", lambda **_: created.append("endpoint"), unique_id="count-creates"
    )
    try:
        assert run_with_a_kill_at_every_call(start) > 0
    finally:
        sagemaker.meta.events.unregister("after-call.sagemaker.CreateEndpoint", unique_id="count-creates")
    assert drive(start).status == Deployment.Status.SUCCEEDED, start.error

    # Every rerun found the endpoint the first CreateEndpoint made (moto would accept a second).
    assert created == ["endpoint"], created

    assert counts() == live
    assert builds_started() == 1
    assert Endpoint.objects.get(name="iris-sm").status == Endpoint.Status.LIVE
    assert ExternalResource.objects.live().filter(kind=ExternalResource.Kind.SAGEMAKER_ENDPOINT).count() == 1
