"""The SageMaker target through the REST API and a real Celery worker against moto, with the
worker SIGKILLed inside every step of a create and of a delete (the worker says it is
inside: testsupport.pipeline.kill_inside_step) and then restarted: every step runs a
second time, resumed by the reconciler the worker's own beat runs (never by the test), and
the endpoint still goes live, answers, and is torn down to zero tagged resources."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User

from deployer.models import Deployment, Endpoint
from deployer.targets import get_target
from deployer.tests.pipeline_support import FaultyWorker, finish
from deployer.tests.sagemaker_support import ONE_PUBLIC_ENDPOINT, counts, latest, stub_model, tagged
from testsupport.moto import MotoServer
from testsupport.pipeline import kill_inside_step

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def kill_in_every_step(worker: FaultyWorker, deployment: Deployment, kind: str) -> Deployment:
    steps = get_target("sagemaker").steps(kind, public=True)
    for step in steps:
        kill_inside_step(worker, deployment, step)
    deployment = finish(deployment)
    attempts = dict(deployment.steps.values_list("name", "attempts"))
    assert attempts == dict.fromkeys(steps, 2), "every step killed once and run again"
    return deployment


def test_a_worker_killed_in_every_step_still_deploys_serves_and_deletes_without_leaks(
    aws: MotoServer, faulty_worker: FaultyWorker, owner: User, api_client_for: Any
) -> None:
    client = api_client_for(owner)
    model = stub_model(owner)
    response = client.post(
        "/api/v1/endpoints/",
        {"name": "iris-sm", "model": model.pk, "target": "sagemaker", "public": True},
        format="json",
    )
    assert response.status_code == 202
    creation = kill_in_every_step(faulty_worker, latest("iris-sm"), Deployment.Kind.CREATE)

    assert creation.status == Deployment.Status.SUCCEEDED, creation.error
    assert Endpoint.objects.get(name="iris-sm").status == Endpoint.Status.LIVE
    assert counts() == ONE_PUBLIC_ENDPOINT
    aws.queue_endpoint_results({"Body": '["virginica"]', "ContentType": "application/json"})
    answer = client.generic(
        "POST", "/api/v1/endpoints/iris-sm/invocations", b'[{"Sepal.Length": 6.3}]', content_type="application/json"
    )
    assert (answer.status_code, json.loads(answer.content)) == (200, ["virginica"])

    assert client.delete("/api/v1/endpoints/iris-sm/").status_code == 202
    deletion = kill_in_every_step(faulty_worker, latest("iris-sm"), Deployment.Kind.DELETE)

    assert deletion.status == Deployment.Status.SUCCEEDED, deletion.error
    assert tagged() == []
    assert set(counts().values()) == {0}
